import Glibc
import Logging
import MeshKernel
import Synchronization

/// The nice values of the tenants' threads: by weight, and each period with
/// the tenants over their share of a contended CPU demoted (``CPUFairShare``).
///
/// A nice value is set only when it changes. Raising a thread's priority
/// again needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowing it): without,
/// the kernel's `EACCES` leaves the value as it is and a warning is logged,
/// once for each value that cannot be set. For the same reason tenants are
/// demoted only with `CAP_SYS_NICE`: a demoted thread could not be restored.
final class TenantPriorities: Sendable {
    private struct Tenant {
        var weight: Int
        let thread: TenantThread
        /// The scheduler's counts at the start of the period.
        var counted: TenantThread.SchedulingStatistics?
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
    }

    private let state = Mutex(State())
    private let logger: Logger
    /// How often usage is compared with shares.
    let period: Duration
    /// Whether tenants over their share are demoted (with `CAP_SYS_NICE`).
    let demotes: Bool

    init(period: Duration = .milliseconds(100), demotes: Bool = Capability.sysNice.isEffective, logger: Logger) {
        self.period = period
        self.demotes = demotes
        self.logger = logger
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

    /// One period: each tenant's use of the CPU since the last, and the demotions it calls for.
    func balance() {
        let (threads, before) = state.withLock { ($0.tenants.mapValues(\.thread), $0.demoted) }
        // Read outside the lock: files in /proc.
        let counted = threads.mapValues(\.schedulingStatistics)
        let cpus = threads.values.reduce(into: Set<Int>()) { $0.formUnion($1.allowedCPUs ?? []) }.count
        change { state in
            var usage: [String: CPUFairShare.Usage] = [:]
            for (name, now) in counted {
                guard let now, var tenant = state.tenants[name], tenant.thread === threads[name] else { continue }
                if let before = tenant.counted {
                    usage[name] = CPUFairShare.Usage(weight: tenant.weight, cpu: now.cpu - before.cpu,
                                                     waited: now.waited - before.waited, runs: now.runs - before.runs)
                }
                tenant.counted = now
                state.tenants[name] = tenant
            }
            if demotes { state.demoted = CPUFairShare.demoted(usage, period: period, cpus: cpus, before: state.demoted) }
        }
        let after = demoted
        for name in after.subtracting(before).sorted() {
            logger.info("tenant demoted: over its CPU share while another tenant waits", metadata: ["tenant": "\(name)"])
        }
        for name in before.subtracting(after).sorted() {
            logger.info("tenant restored to its weight's priority", metadata: ["tenant": "\(name)"])
        }
    }

    /// Balances every period until the task is cancelled.
    func run() async {
        if !demotes {
            logger.info("tenants over their CPU share are not demoted: restoring a demoted tenant's priority needs CAP_SYS_NICE")
        }
        while true {
            do { try await Task.sleep(for: period) } catch { return }
            balance()
        }
    }

    /// The tenants demoted now.
    var demoted: Set<String> { state.withLock { $0.demoted } }

    /// Changes the state, then sets the nice values that changed (under the
    /// lock, so that changes apply in order) and logs what failed.
    private func change(_ body: (inout State) -> Void) {
        let failures = state.withLock { state -> [(String, Priority, Errno)] in
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
            return failures
        }
        for (name, priority, error) in failures {
            let why = error == .permissionDenied || error == .notPermitted ? ": raising it needs CAP_SYS_NICE (or RLIMIT_NICE)" : ""
            logger.warning("tenant thread's priority unchanged\(why)", metadata: ["tenant": "\(name)", "niceness": "\(priority.niceness)", "error": "\(error)"])
        }
    }
}
