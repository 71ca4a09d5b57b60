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
                id = pid_t((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self"))?
                    .split(separator: "/").last.flatMap { Int32($0) } ?? 0)
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

    @Test("sets a thread's nice value and slice, and the default slice again; an unknown thread is ESRCH")
    func setsNiceAndSlice() throws {
        let thread = ParkedThread()
        defer { thread.release() }
        #expect(thread.id > 0)
        let defaultSlice = try #require(thread.sched("se.slice"))
        let base = thread.niceness
        try ThreadScheduling.setFair(thread: thread.id, niceness: min(19, base + 3), slice: .milliseconds(20))
        #expect(thread.niceness == min(19, base + 3))
        #expect(thread.sched("se.slice") == 20_000_000)
        // Raising the priority back needs CAP_SYS_NICE; with it, the kernel's default slice returns too.
        if Capability.sysNice.isEffective {
            try ThreadScheduling.setFair(thread: thread.id, niceness: base)
            #expect(thread.niceness == base)
            #expect(thread.sched("se.slice") == defaultSlice)
        } else {
            #expect(throws: Errno.self) { try ThreadScheduling.setFair(thread: thread.id, niceness: base) }
        }
        #expect(throws: Errno(rawValue: ESRCH)) { try ThreadScheduling.setFair(thread: pid_t(Int32.max), niceness: 0) }
    }
}
