import MeshKernel
import Synchronization

/// The set of watched workloads as the capture programs read it: a hash by
/// cgroup id, and the range of the watched ids in two global variables.
///
/// Every send and receive call of the machine asks whether its cgroup is
/// watched. A cgroup outside the range is answered by two comparisons; only
/// one inside it costs a hash lookup (about 60 ns here, `bpf_stats`).
/// Cgroup ids grow as cgroups are made, so the older cgroups of a node's own
/// services usually fall below the range of its workloads.
///
/// The range is widened before a workload enters the hash and narrowed after
/// one leaves it, so a program that reads it between the two stores of a
/// change sees a range that still covers every watched workload.
final class WatchedWorkloads: Sendable {
    private let capture: HttpCaptureObject.Loaded
    /// The watched cgroup ids, as in the hash.
    private let cgroups = Mutex<Set<UInt64>>([])

    init(_ capture: HttpCaptureObject.Loaded) {
        self.capture = capture
    }

    /// Watches `cgroup` with `identity`, or changes the identity it is watched with.
    func insert(_ cgroup: UInt64, identity: UInt32) throws(BPFError) {
        try cgroups.withLock { (cgroups) throws(BPFError) in
            var widened = cgroups
            widened.insert(cgroup)
            try cover(widened)
            try capture.maps.watchedWorkloads.insert(.init(identity: identity), for: cgroup)
            cgroups = widened
        }
    }

    /// Stops watching `cgroup`; false if it was not watched.
    func remove(_ cgroup: UInt64) throws(BPFError) -> Bool {
        try cgroups.withLock { (cgroups) throws(BPFError) in
            let removed = try capture.maps.watchedWorkloads.remove(cgroup)
            cgroups.remove(cgroup)
            try cover(cgroups)
            return removed
        }
    }

    /// Sets the range to `cgroups`' lowest and highest ids (an empty range for none).
    private func cover(_ cgroups: Set<UInt64>) throws(BPFError) {
        try capture.globals.watchedLowest.set(cgroups.min() ?? .max)
        try capture.globals.watchedHighest.set(cgroups.max() ?? 0)
    }
}
