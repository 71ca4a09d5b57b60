import Foundation
import MeshKernel
import MeshTestSupport
import Testing

/// `ThreadScheduling.setFair` on a thread of this test's own, read back from `/proc`.
@Suite("Thread scheduling: nice value and slice")
struct ThreadSchedulingTests {
    /// A thread that waits until released, and its kernel id.
    private final class ParkedThread: @unchecked Sendable {
        private let released = DispatchSemaphore(value: 0)
        private let started = DispatchSemaphore(value: 0)
        private(set) var id: pid_t = 0

        init() {
            let thread = Thread { [self] in
                id = ThreadScheduling.currentThreadID() ?? 0
                started.signal()
                released.wait()
            }
            thread.start()
            started.wait()
        }

        func release() { released.signal() }

        /// A field of `/proc/self/task/ID/sched`, such as `se.slice`.
        func sched(_ field: String) -> Int? {
            let text = (try? String(contentsOfFile: "/proc/self/task/\(id)/sched", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").first { $0.hasPrefix(field + " ") }
                .flatMap { $0.split(separator: ":").last }.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        }

        var niceness: Int32 { getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(id)) }
    }

    /// Whether this kernel keeps a thread's own slice (Linux 6.12 and later) and shows it (`se.slice`, with scheduler debugging).
    private static let slicesShown = SystemCheck.kernelVersion >= (6, 12)
        && ((try? String(contentsOfFile: "/proc/self/sched", encoding: .utf8))?.contains("se.slice") ?? false)

    @Test("sets a thread's nice value and slice, and the default slice again; an unknown thread is ESRCH")
    func setsNiceAndSlice() throws {
        let thread = ParkedThread()
        defer { thread.release() }
        #expect(thread.id > 0)
        // Where slices cannot be read the slice is only set, not checked; CI's kernel must show them.
        if KernelTest.isCI { #expect(Self.slicesShown, "CI's kernel must keep and show thread slices (Linux 6.12+, se.slice in /proc/PID/sched)") }
        let defaultSlice = thread.sched("se.slice")
        let base = thread.niceness, lower = min(19, base + 3)
        try ThreadScheduling.setFair(thread: thread.id, niceness: lower, slice: .milliseconds(20))
        #expect(thread.niceness == lower)
        if Self.slicesShown { #expect(thread.sched("se.slice") == 20_000_000) }
        // The default slice again, at the same nice value: no privilege needed.
        try ThreadScheduling.setFair(thread: thread.id, niceness: lower)
        if Self.slicesShown { #expect(thread.sched("se.slice") == defaultSlice) }
        // Raising the priority back needs CAP_SYS_NICE.
        if Capability.sysNice.isEffective {
            try ThreadScheduling.setFair(thread: thread.id, niceness: base)
            #expect(thread.niceness == base)
        } else if lower > base {
            #expect(throws: Errno.notPermitted) { try ThreadScheduling.setFair(thread: thread.id, niceness: base) }
        }
        #expect(throws: Errno.noSuchProcess) { try ThreadScheduling.setFair(thread: pid_t(Int32.max), niceness: 0) }
    }
}
