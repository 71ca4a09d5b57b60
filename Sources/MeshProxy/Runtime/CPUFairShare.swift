/// Fair-share scheduling of the tenants' threads on top of the kernel's
/// weights, after Kay and Lauder's share scheduler: work within a tenant's
/// share of the proxy's CPU runs ahead of work beyond it.
///
/// Weights alone give each tenant its share of a contended CPU, but not
/// latency: beside a thread flooding the CPU at the same weight, the
/// kernel's scheduler (EEVDF, on this kernel) lets a quiet tenant's woken
/// thread wait for milliseconds. So each period the proxy compares each
/// tenant's CPU time with its weighted share of what the tenants used
/// together. While the tenants' threads keep at least ``busyFraction`` of the
/// CPUs they may run on busy, a tenant at least ``entry`` times over its
/// share, while a tenant below its share waits for a CPU (``heldBackFraction``
/// of the period in all; and, where the busy tenants could each have a CPU,
/// ``heldBack`` on average each time it runs), is *demoted*: its thread runs as low as the kernel's nice range
/// goes, keeping its weight relative to other demoted tenants
/// (``niceness(weights:demoted:base:)``). It stays demoted until it is back
/// under its share, no other tenant is busy, or the CPUs are no longer busy. Like CPU requests in
/// Kubernetes, the share is guaranteed and the rest is best effort.
enum CPUFairShare {
    /// One tenant's thread over the last period.
    struct Usage: Equatable {
        /// The tenant's weight.
        var weight: Int
        /// CPU time the thread used.
        var cpu: Duration
        /// The time the thread waited for a CPU, once runnable.
        var waited: Duration
        /// The times it ran.
        var runs: Int

        /// The mean time it waited for a CPU each time it ran.
        var waitPerRun: Duration { runs > 0 ? waited / runs : .zero }
    }

    /// How far over its share a tenant must be to be demoted.
    static let entry = 1.25
    /// The part of the period a tenant below its share waited for a CPU, in
    /// all, for it to be held back: a few short waits are not. Where the busy
    /// tenants share CPUs (more of them than CPUs), that is all it takes: any
    /// wait is behind another tenant's thread, and a tenant that runs many
    /// times a period dilutes its few waits of a whole tick behind a flooding
    /// thread, which are its p99, into a mean of microseconds.
    static let heldBackFraction = 0.01
    /// The mean wait per run that also makes a tenant held back where the busy
    /// tenants could each have a CPU: there a tenant's own wake-ups add a few
    /// microseconds each, and a thousand of them make ``heldBackFraction``
    /// without any other tenant in the way.
    static let heldBack: Duration = .microseconds(50)
    /// The least part of their CPUs the tenants' threads used together for any tenant to be demoted (of the
    /// CPUs they may use, or as many as there are busy threads if fewer): below, a tenant that waits for a
    /// CPU waits for other processes, whom demoting a tenant would only help.
    static let busyFraction = 0.5
    /// A tenant that used less of the period than this fraction counts as idle.
    static let idleFraction = 0.001
    /// A demoted thread's time slice, longer than the kernel's default: a
    /// woken thread of a shorter slice then preempts it at once, rather than
    /// at the next tick once the demoted thread's slice is used.
    static let demotedSlice: Duration = .milliseconds(20)

    /// The tenants to demote after a period of `period` with `usage`, on
    /// threads that may use `cpus` CPUs, given those demoted before.
    static func demoted(_ usage: [String: Usage], period: Duration, cpus: Int, before: Set<String>) -> Set<String> {
        let idle = period.inSeconds * idleFraction
        let busy = usage.filter { $0.value.cpu.inSeconds > idle && $0.value.weight > 0 }
        let total = busy.values.reduce(0) { $0 + $1.cpu.inSeconds }
        // Alone, a tenant holds back nobody; with the CPUs mostly idle, the tenants do not hold back each other.
        // (Each thread uses one CPU at most.)
        guard busy.count > 1, total >= busyFraction * Double(max(1, min(cpus, busy.count))) * period.inSeconds else { return [] }
        let weights = Double(busy.values.reduce(0) { $0 + $1.weight })
        let overShare = busy.mapValues { $0.cpu.inSeconds / (total * Double($0.weight) / weights) }
        let heldBack = busy.contains { name, tenant in
            !before.contains(name) && overShare[name, default: 0] < 1 && tenant.waited.inSeconds >= heldBackFraction * period.inSeconds
                && (cpus < busy.count || tenant.waitPerRun >= Self.heldBack)
        }
        return Set(overShare.compactMap { name, ratio in
            if before.contains(name) { ratio >= 1 ? name : nil } else { heldBack && ratio >= entry ? name : nil }
        })
    }

    /// Each tenant's nice value: by its weight beside the heaviest
    /// (``TenantThread/niceness(weight:heaviest:base:)``), from the process's
    /// nice value `base`; demoted tenants moved together so that the
    /// lowest-priority one of them is at 19, the bottom of the kernel's range,
    /// and none above any tenant not demoted. (The range is short: tenants
    /// whose weights span many levels may be demoted only to where a light
    /// tenant already is.)
    static func niceness(weights: [String: Int], demoted: Set<String>, base: Int32) -> [String: Int32] {
        let heaviest = weights.values.max() ?? 1
        let byWeight = weights.mapValues { TenantThread.niceness(weight: $0, heaviest: heaviest, base: base) }
        let lowest = demoted.compactMap { byWeight[$0] }.max() ?? 19
        let lowestKept = byWeight.filter { !demoted.contains($0.key) }.values.max() ?? base
        return byWeight.reduce(into: [:]) { nice, entry in
            nice[entry.key] = demoted.contains(entry.key) ? min(19, max(entry.value + 19 - lowest, lowestKept)) : entry.value
        }
    }
}
