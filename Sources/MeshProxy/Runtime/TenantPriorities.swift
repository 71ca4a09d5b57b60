import Glibc
import Logging
import MeshKernel
import NIOCore
import NIOPosix
import Synchronization

/// The nice values of the tenants' threads: by weight, and each period with
/// the tenants over their share of a contended CPU demoted (``CPUFairShare``).
///
/// The periods run on a thread of their own (`mesh:balance`), at the
/// process's nice value: never on a tenant's thread, nor on a worker thread
/// that may have inherited a demoted tenant's priority when it was started.
/// A nice value is set only when it changes. Raising a thread's priority
/// again needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowing it): without,
/// the kernel's `EPERM` leaves the value as it is and a warning is logged,
/// once for each value that cannot be set. For the same reason tenants are
/// demoted only with `CAP_SYS_NICE`: a demoted thread could not be restored.
final class TenantPriorities: Sendable {
    private struct Tenant {
        var weight: Int
        let thread: TenantThread
        /// The scheduler's counts at the start of the period, and when they were read.
        var counted: (statistics: TenantThread.SchedulingStatistics, at: ContinuousClock.Instant)?
        /// The priority last set.
        var applied: Priority?
        /// The priority last warned about.
        var warned: Priority?
    }

    /// A thread's nice value and time slice (nil: the kernel's default).
    private struct Priority: Equatable {
        var niceness: Int32
        var slice: Duration?
    }

    private struct State {
        var tenants: [String: Tenant] = [:]
        var demoted: Set<String> = []
        /// The periods' thread and task, while balancing.
        var balancing: (group: MultiThreadedEventLoopGroup, task: RepeatedTask)?
    }

    private let state = Mutex(State())
    private let logger: Logger
    /// How often usage is compared with shares.
    let period: Duration
    /// Whether tenants over their share are demoted (with `CAP_SYS_NICE`).
    let demotes: Bool
    /// The process's cgroup's `cpu.max` (its CPU quota), if it has a cgroup.
    private let cpuMax: String?

    init(period: Duration = .milliseconds(100), demotes: Bool = Capability.sysNice.isEffective, logger: Logger) {
        self.period = period
        self.demotes = demotes
        self.logger = logger
        cpuMax = (try? Cgroup.of(process: getpid())).map { $0.path + "/cpu.max" }
    }

    /// The tenants now, with their weights and threads: their nice values follow at once.
    func update(_ tenants: [String: (weight: Int, thread: TenantThread)]) {
        change { state in
            state.tenants = tenants.reduce(into: [:]) { next, entry in
                var tenant = state.tenants[entry.key].flatMap { $0.thread === entry.value.thread ? $0 : nil }
                    ?? Tenant(weight: entry.value.weight, thread: entry.value.thread)
                tenant.weight = entry.value.weight
                next[entry.key] = tenant
            }
            state.demoted.formIntersection(tenants.keys)
        }
    }

    /// Starts balancing every period, on a thread of its own (once, before
    /// ``stop()``); without `CAP_SYS_NICE` only logs that tenants are not demoted.
    func start() async {
        guard demotes else {
            logger.info("tenants over their CPU share are not demoted: restoring a demoted tenant's priority needs CAP_SYS_NICE")
            return
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let base = TenantThread.processNiceness, name = TenantThread.threadName(for: "balance")
        // At the process's nice value, whatever the starting thread's (the submitted closure cannot fail).
        try! await group.next().submit {
            TenantThread.nameCurrentThread(name)
            if let thread = ThreadScheduling.currentThreadID() { try? ThreadScheduling.setFair(thread: thread, niceness: base) }
        }.get()
        let task = group.next().scheduleRepeatedTask(initialDelay: TimeAmount(period), delay: TimeAmount(period)) {
            [self] _ in balance()
        }
        state.withLock { $0.balancing = (group, task) }
    }

    /// Stops balancing and restores the demoted tenants (they drain at their weight's priority).
    func stop() async {
        let balancing = state.withLock { state in
            defer { state.balancing = nil }
            return state.balancing
        }
        guard let balancing else { return }
        let stopped = balancing.group.next().makePromise(of: Void.self)
        balancing.task.cancel(promise: stopped)
        try? await stopped.futureResult.get()
        try? await balancing.group.shutdownGracefully()
        report(change { $0.demoted = [] })
    }

    /// One period: each tenant's use of the CPU since the last, and the demotions it calls for.
    func balance() {
        guard demotes else { return }
        let threads = state.withLock { $0.tenants.mapValues(\.thread) }
        // Files in /proc are read outside the lock.
        let counted = threads.mapValues(\.schedulingStatistics), now = ContinuousClock.now
        let (usage, elapsed, before) = state.withLock { state in
            var usage: [String: CPUFairShare.Usage] = [:]
            var elapsed = Duration.zero
            for (name, statistics) in counted {
                guard let statistics, var tenant = state.tenants[name], tenant.thread === threads[name] else { continue }
                if let before = tenant.counted {
                    usage[name] = CPUFairShare.Usage(weight: tenant.weight, cpu: statistics.cpu - before.statistics.cpu,
                                                     waited: statistics.waited - before.statistics.waited,
                                                     runs: statistics.runs - before.statistics.runs)
                    elapsed = max(elapsed, now - before.at)
                }
                tenant.counted = (statistics, now)
                state.tenants[name] = tenant
            }
            return (usage, elapsed, state.demoted)
        }
        // Nobody to demote unless two tenants ran (the common, idle case reads nothing more).
        let ran = usage.filter { $0.value.cpu > .zero }
        var demoted: Set<String> = []
        if ran.count > 1, elapsed > .zero {
            // The tenants' threads can use no more CPUs than they may run on, or the process's quota allows.
            let allowed = ran.keys.reduce(into: Set<Int>()) { $0.formUnion(threads[$1]?.allowedCPUs ?? []) }.count
            demoted = CPUFairShare.demoted(usage, period: elapsed, cpus: min(allowed, cpuQuota() ?? allowed), before: before)
        }
        guard demoted != before else { return }
        // (Tenants removed meanwhile are no longer there to demote.)
        report(change { $0.demoted = demoted.intersection($0.tenants.keys) })
    }

    /// Whether `tenant` is demoted now.
    func isDemoted(_ tenant: String) -> Bool { state.withLock { $0.demoted.contains(tenant) } }

    /// Logs the demotions and restorations a change made.
    private func report(_ demoted: (before: Set<String>, after: Set<String>)) {
        for name in demoted.after.subtracting(demoted.before).sorted() {
            logger.info("tenant demoted: over its CPU share while another tenant waits", metadata: ["tenant": "\(name)"])
        }
        for name in demoted.before.subtracting(demoted.after).sorted() {
            logger.info("tenant restored to its weight's priority", metadata: ["tenant": "\(name)"])
        }
    }

    /// The CPUs the process's cgroup may use (`cpu.max`, rounded up), nil without a quota.
    private func cpuQuota() -> Int? {
        guard let cpuMax, let text = try? String(decoding: readFile(cpuMax), as: UTF8.self) else { return nil }
        let fields = text.split(whereSeparator: \.isWhitespace)
        guard fields.count == 2, let quota = Int(fields[0]), let period = Int(fields[1]), period > 0 else { return nil }
        return max(1, (quota + period - 1) / period)
    }

    /// Changes the state, then sets the nice values that changed (under the
    /// lock, so that changes apply in order) and logs what failed. Returns the
    /// demoted tenants before and after.
    @discardableResult
    private func change(_ body: (inout State) -> Void) -> (before: Set<String>, after: Set<String>) {
        let (demoted, failures) = state.withLock { state -> ((Set<String>, Set<String>), [(String, Priority, Errno)]) in
            let before = state.demoted
            body(&state)
            let wanted = CPUFairShare.niceness(weights: state.tenants.mapValues(\.weight), demoted: state.demoted,
                                               base: TenantThread.processNiceness)
            var failures: [(String, Priority, Errno)] = []
            for (name, niceness) in wanted {
                let priority = Priority(niceness: niceness, slice: state.demoted.contains(name) ? CPUFairShare.demotedSlice : nil)
                guard state.tenants[name]?.applied != priority else { continue }
                do throws(Errno) {
                    try state.tenants[name]?.thread.prioritize(niceness: priority.niceness, slice: priority.slice)
                    state.tenants[name]?.applied = priority
                } catch {
                    if state.tenants[name]?.warned != priority { failures.append((name, priority, error)) }
                    state.tenants[name]?.warned = priority
                }
            }
            return ((before, state.demoted), failures)
        }
        for (name, priority, error) in failures {
            let why = error == .permissionDenied || error == .notPermitted ? ": raising it needs CAP_SYS_NICE (or RLIMIT_NICE)" : ""
            logger.warning("tenant thread's priority unchanged\(why)", metadata: ["tenant": "\(name)", "niceness": "\(priority.niceness)", "error": "\(error)"])
        }
        return demoted
    }
}
