import CoreMetrics
import Dispatch
import Glibc
import MeshKernel
import NIOCore
import NIOPosix
import Synchronization

/// The event-loop thread that one tenant's listener, connections and
/// upstream pool run on, so that the kernel shares the CPU among tenants by
/// their weights, like CPU requests among containers.
///
/// The thread's nice value follows its tenant's weight relative to the
/// heaviest tenant's (``niceness(weight:heaviest:base:)``): each nice level is a
/// factor of 1.25 in the kernel's CPU weights, so tenants of weights 1 and 3
/// get about 1:3 of a contended CPU. Being the kernel's scheduler, the share
/// is preemptive (a quiet tenant's thread, woken, runs ahead of a flooding
/// one's) and applies only under contention: an uncontended tenant takes
/// what it needs. The thread is named `mesh:` and the tenant's name (as `top
/// -H` shows it, cut to the kernel's 15 bytes), and its CPU time is the
/// tenant's (``cpuTime``). The tenant's plaintext L4 connections are spliced,
/// and its plaintext HTTP connections served, on a second thread, its
/// ``SpliceLoop``, of the same name and priority, whose CPU time counts as
/// the tenant's too. Each period ``TenantPriorities`` may demote the
/// thread of a tenant far over its share of a contended CPU (``CPUFairShare``);
/// threads it starts meanwhile (libdispatch's workers) inherit that priority.
final class TenantThread: Sendable {
    /// The loop that runs the tenant.
    let eventLoop: any EventLoop
    /// The kernel's id of the thread, for its priority and CPU time (nil if
    /// `/proc/thread-self` could not be read: the thread is then left as it is).
    let threadID: pid_t?
    /// The thread's name (``threadName(for:)``), which its splice loop's thread shares.
    let name: String
    private let group: MultiThreadedEventLoopGroup
    private let lifetime = Mutex(Lifetime())

    private struct Lifetime {
        var openConnections = 0
        var retired = false
        var shutDown = false
        /// The tenant's splice loop, once a connection was spliced.
        var spliceLoop: SpliceLoop?
        /// The upstream pool of the HTTP connections served on the splice loop (made with it).
        var loopPool: UpstreamPool?
        /// The priority last set (a splice loop started later takes it too).
        var priority: (niceness: Int32, slice: Duration?)?
        /// The splice loop's polling budget last set (likewise).
        var spliceSpin = Duration.zero

        /// Whether the thread is to be shut down now (once).
        mutating func shouldShutDown() -> Bool {
            guard retired, openConnections == 0, !shutDown else { return false }
            shutDown = true
            return true
        }
    }

    /// Where the thread's CPU time goes, and how much of it has gone there.
    private final class CPUReport: Sendable {
        let counter: FloatingPointCounter
        let reported = Mutex(Duration.zero)

        init(_ counter: FloatingPointCounter) { self.counter = counter }

        /// Adds what the thread used since the last report.
        func update(_ used: Duration?) {
            guard let used else { return }
            let added = reported.withLock { reported in
                defer { reported = max(reported, used) }
                return used - reported
            }
            if added > .zero { counter.increment(by: added.inSeconds) }
        }
    }

    private let cpuReport: CPUReport?

    private init(group: MultiThreadedEventLoopGroup, threadID: pid_t?, name: String, cpuReport: CPUReport?) {
        self.group = group
        self.name = name
        self.eventLoop = group.next()
        self.threadID = threadID
        self.cpuReport = cpuReport
    }

    /// Starts a thread for `tenant`; with a metrics factory, its CPU time is
    /// reported as `mesh_proxy_cpu_seconds_total{tenant}`.
    static func start(for tenant: String, reportingTo factory: (any MetricsFactory)? = nil) async -> TenantThread {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let name = threadName(for: tenant)
        // The submitted closure cannot fail.
        let threadID = try! await group.next().submit { () -> pid_t? in
            nameCurrentThread(name)
            return ThreadScheduling.currentThreadID()
        }.get()
        let report = factory.map {
            CPUReport(FloatingPointCounter(label: "mesh_proxy_cpu_seconds_total", dimensions: [("tenant", tenant)], factory: $0))
        }
        let thread = TenantThread(group: group, threadID: threadID, name: name, cpuReport: report)
        if let report {
            // Each second, and once more as the thread ends.
            thread.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [thread] _ in report.update(thread.cpuTime) }
        }
        return thread
    }

    /// The thread's name for `tenant`: `mesh:` and the name, cut at a character
    /// boundary to the 15 bytes the kernel keeps.
    static func threadName(for tenant: String) -> String {
        var name = ""
        for character in "mesh:\(tenant)" {
            guard name.utf8.count + character.utf8.count <= 15 else { break }
            name.append(character)
        }
        return name
    }

    /// Names the calling thread (`/proc/thread-self/comm`; `pthread_setname_np` is a GNU extension too).
    static func nameCurrentThread(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = name.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }

    /// The nice value for a tenant of `weight` beside a heaviest tenant of
    /// `heaviest`, in a process running at nice `base`: the heaviest at
    /// `base`, and one level more for each factor of 1.25 less weight (as the
    /// kernel's weights step), at most 19.
    static func niceness(weight: Int, heaviest: Int, base: Int32 = 0) -> Int32 {
        guard weight < heaviest, weight > 0 else { return base }
        let levels = (log(Double(heaviest) / Double(weight)) / log(1.25)).rounded()
        return Int32(min(Double(base) + levels, 19))
    }

    /// The process's nice value (its main thread's), which tenant threads are niced from.
    static var processNiceness: Int32 {
        errno = 0
        let value = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(getpid()))
        return errno == 0 ? value : 0
    }

    /// Sets the thread's nice value and time slice (nil: the kernel's
    /// default), with ``MeshKernel/ThreadScheduling``. Lowering the nice value
    /// (raising the thread's priority) needs `CAP_SYS_NICE` or an
    /// `RLIMIT_NICE` allowing it; without, the kernel's `EPERM` is thrown
    /// and nothing changes. The splice loop's thread follows the event loop's
    /// (and a loop started later starts at it); should the kernel refuse it
    /// alone, its error is thrown.
    func prioritize(niceness: Int32, slice: Duration? = nil) throws(Errno) {
        guard let threadID else { return }
        try Self.prioritize(threadID, niceness: niceness, slice: slice)
        let loopThread = lifetime.withLock { lifetime in
            lifetime.priority = (niceness, slice)
            return lifetime.spliceLoop?.threadID
        }
        if let loopThread { try Self.prioritize(loopThread, niceness: niceness, slice: slice) }
    }

    private static func prioritize(_ thread: pid_t, niceness: Int32, slice: Duration?) throws(Errno) {
        do {
            try ThreadScheduling.setFair(thread: thread, niceness: niceness, slice: slice)
        } catch where error == Errno(rawValue: ENOSYS) && slice == nil {
            // A kernel without sched_setattr (before 3.14): the nice value alone.
            guard setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(thread), niceness) == 0 else { throw Errno.current }
        }
    }

    /// Lets the tenant's splice loop poll for up to `budget` before it
    /// sleeps (``SpliceLoop/spin(upTo:)``): the running loop at once, and a
    /// loop started later from the start.
    func spinSplices(upTo budget: Duration) {
        lifetime.withLock { lifetime in
            lifetime.spliceSpin = budget
            lifetime.spliceLoop?.spin(upTo: budget)
        }
    }

    /// The tenant's splice loop, nil while none runs.
    var runningSpliceLoop: SpliceLoop? { lifetime.withLock { $0.spliceLoop } }

    /// The loop this tenant's plaintext L4 connections are spliced on (and its
    /// plaintext HTTP served on), started with the first of them (named like the tenant's thread, at its priority and
    /// polling budget); nil once the tenant's thread has ended. A loop whose
    /// thread has ended (its epoll wait failed) is replaced. Throws why a loop
    /// cannot be started.
    func spliceLoop() throws(Errno) -> SpliceLoop? {
        try lifetime.withLock { lifetime throws(Errno) -> SpliceLoop? in
            guard !lifetime.shutDown else { return nil }
            if let running = lifetime.spliceLoop, running.isRunning { return running }
            let loop = try SpliceLoop(name: name)
            lifetime.spliceLoop = loop
            lifetime.loopPool = UpstreamPool(eventLoop: loop)
            if let priority = lifetime.priority, let thread = loop.threadID {
                try? Self.prioritize(thread, niceness: priority.niceness, slice: priority.slice)
            }
            loop.spin(upTo: lifetime.spliceSpin)
            return loop
        }
    }

    /// The splice loop (``spliceLoop()``) and the upstream pool of the HTTP
    /// connections served on it; nil once the tenant's thread has ended.
    func httpLoop() throws(Errno) -> (loop: SpliceLoop, pool: UpstreamPool)? {
        guard let loop = try spliceLoop() else { return nil }
        return lifetime.withLock { lifetime in
            guard lifetime.spliceLoop === loop, let pool = lifetime.loopPool else { return nil }
            return (loop, pool)
        }
    }

    /// Closes the idle upstream connections of the HTTP connections on the
    /// splice loop, and keeps no more (the tenant is going).
    func closeLoopPool() {
        guard let pool = lifetime.withLock({ $0.loopPool }) else { return }
        pool.eventLoop.execute { pool.close() }
    }

    /// What the kernel's scheduler has counted for a thread (its `schedstat`).
    struct SchedulingStatistics: Equatable {
        /// CPU time used.
        var cpu: Duration
        /// Time spent runnable, waiting for a CPU.
        var waited: Duration
        /// Times it ran (was given a CPU).
        var runs: Int
    }

    /// The scheduler's counts for the tenant's threads (its event loop's and
    /// its splice loop's, summed), nil once the event loop's thread has ended.
    var schedulingStatistics: SchedulingStatistics? {
        guard var counts = threadID.flatMap(Self.schedulingStatistics(ofThread:)) else { return nil }
        if let loop = lifetime.withLock({ $0.spliceLoop?.threadID }), let more = Self.schedulingStatistics(ofThread: loop) {
            counts.cpu += more.cpu
            counts.waited += more.waited
            counts.runs += more.runs
        }
        return counts
    }

    /// The scheduler's counts for thread `threadID` of this process, nil if it has none (has ended).
    static func schedulingStatistics(ofThread threadID: pid_t) -> SchedulingStatistics? {
        guard let text = try? readFile("/proc/self/task/\(threadID)/schedstat") else { return nil }
        let fields = text.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") })
            .compactMap { Int64(String(decoding: $0, as: UTF8.self)) }
        guard fields.count == 3 else { return nil }
        return SchedulingStatistics(cpu: .nanoseconds(fields[0]), waited: .nanoseconds(fields[1]), runs: Int(fields[2]))
    }

    /// The CPUs the thread may run on (`Cpus_allowed_list` in its `status`), nil once it has ended.
    var allowedCPUs: Set<Int>? {
        guard let threadID, let text = try? readFile("/proc/self/task/\(threadID)/status") else { return nil }
        let field = "Cpus_allowed_list:"
        guard let line = String(decoding: text, as: UTF8.self).split(separator: "\n").first(where: { $0.hasPrefix(field) }) else { return nil }
        return Self.cpus(inList: line.dropFirst(field.count))
    }

    /// The CPUs of a kernel CPU list such as `0-3,8` (nil if it is not one).
    static func cpus(inList list: Substring) -> Set<Int>? {
        var cpus = Set<Int>()
        for range in list.split(separator: ",") {
            let bounds = range.split(separator: "-").map { Int($0.filter { !$0.isWhitespace }) }
            guard let first = bounds.first ?? nil, let last = bounds.last ?? nil, bounds.count <= 2, first <= last else { return nil }
            cpus.formUnion(first...last)
        }
        return cpus
    }

    /// CPU time the tenant's threads have used (the kernel's `schedstat`), nil once they have ended.
    var cpuTime: Duration? { schedulingStatistics?.cpu }

    /// A connection of the tenant opened.
    func connectionOpened() {
        lifetime.withLock { $0.openConnections += 1 }
    }

    /// A connection of the tenant closed; a retired thread ends with its last one.
    func connectionClosed() {
        if lifetime.withLock({ $0.openConnections -= 1; return $0.shouldShutDown() }) { shutDown() }
    }

    /// The tenant is gone (its listener closed): the splice loop's idle
    /// upstream connections close, and the thread ends once its open
    /// connections have (at once without any).
    func retire() {
        closeLoopPool()
        if lifetime.withLock({ $0.retired = true; return $0.shouldShutDown() }) { shutDown() }
    }

    private func shutDown() {
        cpuReport?.update(cpuTime)
        lifetime.withLock { $0.spliceLoop }?.stop()
        // (Called on the loop itself, from a connection's close: the group shuts down from elsewhere.)
        group.shutdownGracefully(queue: .global()) { _ in }
    }
}
