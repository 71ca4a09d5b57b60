// syscall-counter: bpf2swift on a program outside the mesh. Counts system
// calls per process for a few seconds and prints the busiest processes.
//
//   swift run syscall-counter [seconds] [pid]
import Foundation
import MeshKernel

let seconds = CommandLine.arguments.count > 1 ? Double(CommandLine.arguments[1]) ?? 2 : 2
let onlyPid = CommandLine.arguments.count > 2 ? UInt32(CommandLine.arguments[2]) ?? 0 : 0

do {
    // The skeleton, its map types and globals are generated from the C at build time.
    let skeleton = try SyscallCounterObject.open()
    try skeleton.globals.onlyPid.set(onlyPid)            // a .rodata constant: before load
    let counter = try skeleton.load()
    let link = try counter.programs.countSyscall.attachRawTracepoint()
    defer { link.close() }                               // detached on exit, whatever happens

    Thread.sleep(forTimeInterval: seconds)
    let entries = try counter.maps.perProcess.entries()   // [(UInt32, SyscallCounterObject.ProcessStats)]
    print("\(try counter.globals.totalCalls.get()) system calls in \(seconds) s from \(entries.count) processes; busiest:")
    for (pid, stats) in entries.sorted(by: { $0.value.calls > $1.value.calls }).prefix(8) {
        let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        let padded = name.padding(toLength: 16, withPad: " ", startingAt: 0)
        print(String(format: "  %7u ", pid) + padded + String(format: " %8llu calls, last syscall %u", stats.calls, stats.lastSyscall))
    }
} catch {
    FileHandle.standardError.write(Data("syscall-counter: \(error)\n".utf8))
    exit(1)
}
