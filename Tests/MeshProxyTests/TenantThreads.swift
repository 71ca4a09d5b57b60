import Foundation
import MeshKernel
@testable import MeshProxy
import MeshTestSupport

/// A thread of this process, as `/proc/self/task` shows it.
struct ProcessThread: Equatable {
    let id: Int32
    let niceness: Int32
}

/// The threads of this process named `name` (the proxy names a tenant's thread `mesh:` and the tenant).
func threads(named name: String) -> [ProcessThread] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { task -> ProcessThread? in
        guard let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
              comm.trimmingCharacters(in: .newlines) == name,
              let stat = try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After the name in parentheses: state is field 3, nice field 19.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 16, let id = Int32(task), let niceness = Int32(fields[16]) else { return nil }
        return ProcessThread(id: id, niceness: niceness)
    }
}

/// The scheduler's counts for `threads` of this process, summed; nil if one has ended.
func schedulingStatistics(ofThreads threads: [Int32]) -> TenantThread.SchedulingStatistics? {
    var sum = TenantThread.SchedulingStatistics(cpu: .zero, waited: .zero, runs: 0)
    for thread in threads {
        guard let counts = TenantThread.schedulingStatistics(ofThread: thread) else { return nil }
        sum.cpu += counts.cpu
        sum.waited += counts.waited
        sum.runs += counts.runs
    }
    return sum
}

/// What one CPU has spent its time on so far, in the kernel's ticks (`/proc/stat`).
struct CPUTicks {
    /// Ticks spent idle (waiting for I/O included).
    let idle: Int
    /// Every tick counted.
    let total: Int

    /// `/proc/stat` not as this reads it.
    struct Unreadable: Error, CustomStringConvertible {
        let reason: String
        var description: String { reason }
    }

    /// CPU `cpu`'s ticks now.
    init(cpu: Int) throws {
        let stat = try String(contentsOfFile: "/proc/stat", encoding: .utf8)
        guard let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu\(cpu) ") }) else {
            throw Unreadable(reason: "/proc/stat has no line for CPU \(cpu)")
        }
        // user nice system idle iowait irq softirq steal (then guest and guest_nice, already in user and nice).
        let ticks = line.split(separator: " ").dropFirst().prefix(8).compactMap { Int($0) }
        guard ticks.count == 8 else { throw Unreadable(reason: "/proc/stat's line for CPU \(cpu) is not eight counts of ticks: \(line)") }
        idle = ticks[3] + ticks[4]
        total = ticks.reduce(0, +)
    }

    /// The share of the time since `earlier` that the CPU was idle (0 if no tick was counted).
    func idleShare(since earlier: CPUTicks) -> Double {
        let ticks = total - earlier.total
        return ticks > 0 ? Double(idle - earlier.idle) / Double(ticks) : 0
    }
}

/// Gives CPU 0 to `threads` alone: every other thread of this process (the
/// peers, the test's tasks) moves to the other CPUs, so that what contends
/// for CPU 0 is `threads` and nothing else of this process. ``restoreThreads()`` undoes it.
func giveCPU0(to threads: [Int32]) throws {
    let cpus = ProcessInfo.processInfo.activeProcessorCount
    _ = try run(["taskset", "-a", "-p", "-c", "1-\(cpus - 1)", "\(getpid())"]).check()
    for thread in threads { _ = try run(["taskset", "-p", "-c", "0", "\(thread)"]).check() }
}

/// Undoes what a test did to this process's threads, including to threads
/// started meanwhile from a pinned, reniced or demoted one (they inherit
/// these): every thread may run on every CPU again and, where CAP_SYS_NICE
/// allows, runs at the main thread's nice value with the kernel's default slice.
func restoreThreads() {
    let cpus = ProcessInfo.processInfo.activeProcessorCount
    _ = try? run(["taskset", "-a", "-p", "-c", "0-\(cpus - 1)", "\(getpid())"]).check()
    guard Capability.sysNice.isEffective else { return }
    let base = TenantThread.processNiceness
    for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
        if let id = pid_t(task) { try? ThreadScheduling.setFair(thread: id, niceness: base) }
    }
}
