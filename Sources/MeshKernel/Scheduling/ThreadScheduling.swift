import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// A thread's place in the kernel's fair scheduler (the normal policy,
/// `SCHED_OTHER`): its nice value and its time slice.
///
/// The slice (Linux 6.12 and later, EEVDF) is how long the thread may run
/// before the scheduler looks again; a thread woken with a shorter slice
/// than the running one's may preempt it at once (the `PREEMPT_SHORT`
/// feature) instead of waiting for the next tick.
public enum ThreadScheduling {
    /// The calling thread's kernel id, from `/proc/thread-self` ("PID/task/TID"):
    /// `gettid()` is a GNU extension that Swift's Glibc module leaves out. Nil
    /// if it cannot be read.
    public static func currentThreadID() -> pid_t? {
        var path = [CChar](repeating: 0, count: 64)
        let count = readlink("/proc/thread-self", &path, path.count - 1)
        guard count > 0 else { return nil }
        let text = String(decoding: path[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: "/").last.flatMap { pid_t($0) }
    }

    /// Sets kernel thread `thread`'s nice value and slice (nil: the kernel's
    /// default; others are held to the kernel's 0.1–100 ms) with
    /// `sched_setattr(2)`, putting the thread in the normal policy (from
    /// `SCHED_BATCH` or `SCHED_IDLE` too). Lowering the nice value needs
    /// `CAP_SYS_NICE` or an `RLIMIT_NICE` allowing it, else `EPERM`; an
    /// unknown thread is `ESRCH`. Kernels before 6.12 ignore the slice.
    public static func setFair(thread: pid_t, niceness: Int32, slice: Duration? = nil) throws(Errno) {
        let nanoseconds = slice.map { slice -> Int64 in
            let held = min(max(slice, .microseconds(100)), .milliseconds(100))
            return held.components.seconds * 1_000_000_000 + held.components.attoseconds / 1_000_000_000
        } ?? 0
        let result = cbpf_sched_set_fair(thread, niceness, UInt64(nanoseconds))
        guard result == 0 else { throw Errno(rawValue: -result) }
    }
}
