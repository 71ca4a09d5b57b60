/// The rule ids of an ``IdentityPolicy``: the counters and the redirect
/// proxy of rule `id` live at index `id` of their tables.
///
/// Ids never handed out go first, then freed ones, oldest first: an id
/// returns to use as late as possible after the policy that held it was
/// replaced, so a connect still reading the replaced set finds that set's
/// own counters and proxies.
struct RuleIDPool {
    /// 0xFFFF means "no rule" to the programs; ids run from 1.
    private static let end = UInt16.max
    private var next: UInt16 = 1
    private var freed: [UInt16] = []
    private var freedStart = 0

    /// `count` ids, or nil (and none taken) when fewer are left.
    mutating func take(_ count: Int) -> [UInt16]? {
        let fresh = Int(Self.end) - Int(next)
        guard count <= fresh + freed.count - freedStart else { return nil }
        var ids: [UInt16] = []
        ids.reserveCapacity(count)
        while ids.count < count {
            if next < Self.end {
                ids.append(next)
                next += 1
            } else {
                ids.append(freed[freedStart])
                freedStart += 1
            }
        }
        if freedStart > 4_096, freedStart * 2 > freed.count {
            freed.removeFirst(freedStart)
            freedStart = 0
        }
        return ids
    }

    /// Returns ids no rule in force holds any more.
    mutating func giveBack(_ ids: [UInt16]) {
        freed += ids
    }
}
