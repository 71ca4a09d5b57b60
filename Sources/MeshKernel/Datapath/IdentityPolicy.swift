import Synchronization

/// Identity-based L3/L4 policy. Egress is enforced at `connect()` and
/// `sendmsg()` of IPv4 and IPv6 sockets (an IPv4-mapped destination is its
/// IPv4 address; a native IPv6 destination is ``Identity/world`` with no
/// address, so rules for any peer or for world match it, CIDRs of a prefix
/// never do): a denied connection fails in the application with `EPERM`.
/// A ``Verdict/redirect(to:)`` rule sends a matching TCP `connect()` to the
/// node proxy instead, as ``ProxyRedirect`` does: the proxy finds the
/// original destination the same ways (its registered cgroup's programs,
/// `SO_ORIGINAL_DST`), with the workload's identity and, if ``ProxyRedirect``
/// knows the workload, its tenant (0 otherwise). The proxy's own
/// connections are never redirected, provided the proxy runs in the very
/// cgroup registered with ``ProxyRedirect/register(proxy:)`` (a child
/// cgroup of it is not recognized); nothing checks that a rule's endpoint
/// is such a proxy's listener. A connection already going to the rule's
/// listener is left alone; one that ``ProxyRedirect``'s rules sent to
/// another listener earlier on the hook goes to the rule's, with the
/// application's original destination. (The record is kept by socket: a
/// socket whose redirected `connect()` failed and that then connects to
/// that listener itself is taken for the same connection.) A native IPv6
/// destination cannot go to the IPv4 proxy: a redirect rule passes it over,
/// and the next rule or the default decides.
/// Ingress is enforced on arriving TCP SYNs and UDP datagrams (`cgroup_skb`),
/// IPv4 and IPv6 (a native IPv6 peer is ``Identity/world`` there too): they
/// are dropped, so the remote client times out, as with network policy.
///
/// Each workload cgroup carries an ``Identity``; peer addresses of workloads
/// are registered with theirs (every other address is ``Identity/world``).
/// A policy is an ordered list of up to ``maximumRules`` rules per identity —
/// the first match decides — and a default for connections matching none.
/// ``setPolicy(for:direction:rules:defaultDeny:)`` replaces a whole policy in one map
/// update, so a new connection sees either the old policy or the new one.
///
/// Failure modes: a cgroup without an identity is not policed (fail open,
/// counted as unmanaged); when the policy table is full, setting a policy
/// for a new identity fails with ``BPFError/Code/mapFull`` and every existing
/// policy keeps applying; when the flow-event ring is full, events are dropped
/// and counted, decisions are not affected.
public final class IdentityPolicy: Sendable {
    /// Which way a policy applies.
    public enum Direction: Sendable {
        /// Connections the workload makes.
        case egress
        /// Connections and datagrams the workload receives.
        case ingress
    }

    /// A decision.
    public enum Verdict: Sendable, Hashable {
        /// Let the connection through.
        case allow
        /// Refuse it with `EPERM`.
        case deny
        /// Let a TCP `connect()` through to this node-proxy listener (an
        /// IPv4 address, as the policy's peers are), keeping the original
        /// destination for the proxy. Egress TCP rules only; needs a policy
        /// created with a ``ProxyRedirect``.
        case redirect(to: Endpoint)
    }

    /// Whom a rule matches.
    public enum Peer: Sendable, Hashable {
        /// Any destination.
        case any
        /// Destinations with this identity.
        case identity(Identity)
        /// Destinations in this network.
        case cidr(IPv4CIDR)
    }

    /// One rule; a nil port range or protocol matches any.
    public struct Rule: Sendable, Hashable {
        /// The peers it matches: destinations for egress, sources for ingress.
        public var peer: Peer
        /// The destination ports it matches (the workload's own ports for ingress).
        public var ports: ClosedRange<UInt16>?
        /// The protocol it matches.
        public var transport: ServiceLoadBalancer.TransportProtocol?
        /// What happens to a match.
        public var verdict: Verdict

        /// Creates a rule.
        public init(_ verdict: Verdict, to peer: Peer, ports: ClosedRange<UInt16>? = nil, transport: ServiceLoadBalancer.TransportProtocol? = nil) {
            self.verdict = verdict
            self.peer = peer
            self.ports = ports
            self.transport = transport
        }
    }

    /// What one rule decided so far.
    public struct RuleCounts: Sendable, Equatable {
        /// Connections it allowed.
        public var allowed: UInt64
        /// Connections it denied.
        public var denied: UInt64
        /// Connections it sent to the node proxy.
        public var redirected: UInt64

        /// Creates counts.
        public init(allowed: UInt64, denied: UInt64, redirected: UInt64 = 0) {
            self.allowed = allowed
            self.denied = denied
            self.redirected = redirected
        }
    }

    /// The most rules one identity's policy can hold.
    public static let maximumRules = 32

    /// The loaded `identity_policy` object and its typed maps.
    public let datapath: IdentityPolicyObject.Loaded
    /// The redirect whose tables the policy's redirect rules share, if any.
    public let proxyRedirect: ProxyRedirect?
    private let links: [BPFLink]
    /// What this object has put into its maps: the identities of workloads
    /// and addresses (rules may only name those), and the rule ids in use per
    /// (identity, direction) with the ids free for reuse.
    private struct State {
        var knownIdentities: Set<UInt32> = []
        var ruleIDsInUse: [String: [UInt16]] = [:]
        var ruleIDs = RuleIDPool()
    }
    private let state = Mutex(State())

    /// Loads the programs and attaches them to `cgroup`.
    ///
    /// - Parameters:
    ///   - cgroup: the cgroup whose workloads (and their descendants) are policed.
    ///   - identities: how many identities can have a policy, per direction.
    ///   - proxyRedirect: the redirect to the node proxy that
    ///     ``Verdict/redirect(to:)`` rules use: its workloads (for the tenant
    ///     and the proxy's own cgroups) and its table of pending redirects,
    ///     which its registered proxies' programs read. Without one, redirect
    ///     rules are refused.
    public init(attachingTo cgroup: Cgroup, identities: Int = 4_096, redirectingThrough proxyRedirect: ProxyRedirect? = nil) throws(BPFError) {
        let skeleton = try IdentityPolicyObject.open()
        try skeleton.maps.policies.setMaxEntries(identities)
        try skeleton.maps.ingressPolicies.setMaxEntries(identities)
        if let proxyRedirect {
            try skeleton.maps.workloads.reuse(descriptor: proxyRedirect.datapath.maps.workloads.map.descriptor())
            try skeleton.maps.pendingRedirects.reuse(descriptor: proxyRedirect.datapath.maps.pendingRedirects.map.descriptor())
        } else {
            // Never written nor read: no redirect rule is accepted.
            try skeleton.maps.workloads.setMaxEntries(1)
            try skeleton.maps.pendingRedirects.setMaxEntries(1)
            try skeleton.maps.ruleProxies.setMaxEntries(1)
        }
        datapath = try skeleton.load()
        self.proxyRedirect = proxyRedirect
        links = [
            try datapath.programs.policeConnect4.attach(to: cgroup),
            try datapath.programs.policeSendmsg4.attach(to: cgroup),
            // IPv6 sockets too, or AF_INET6 (with v4-mapped addresses) would go around the policy.
            try datapath.programs.policeConnect6.attach(to: cgroup),
            try datapath.programs.policeSendmsg6.attach(to: cgroup),
            try datapath.programs.policeIngress.attach(to: cgroup),
        ]
    }

    /// Gives a workload cgroup its identity; its sockets are policed from now on.
    public func assign(_ identity: Identity, to workload: Cgroup) throws(BPFError) {
        try IdentityPolicy.requireWorkloadIdentity(identity, "assign identity")
        try datapath.maps.workloadIdentities.insert(identity.rawValue, for: workload.id())
        state.withLock { _ = $0.knownIdentities.insert(identity.rawValue) }
    }

    /// Identities 0 (which rules read as "any") and the reserved ones below 256
    /// other than host and world cannot name a workload.
    private static func requireWorkloadIdentity(_ identity: Identity, _ operation: BPFError.Operation) throws(BPFError) {
        guard identity.rawValue >= Identity.firstDerived || identity == .host || identity == .world else {
            throw BPFError(.invalidArgument, operation: operation, subject: "\(identity)",
                           detail: "identities below \(Identity.firstDerived) are reserved (1 host, 2 world); derive one from labels")
        }
    }

    /// Records that `address` belongs to a workload of `identity`. Node
    /// addresses are not known to be ``Identity/host`` unless registered so.
    public func register(_ address: IPv4Address, as identity: Identity) throws(BPFError) {
        try IdentityPolicy.requireWorkloadIdentity(identity, "register address")
        try datapath.maps.peerIdentities.insert(identity.rawValue, for: LPMKey(prefixLength: 32, address: address.networkOrder))
        state.withLock { _ = $0.knownIdentities.insert(identity.rawValue) }
    }

    /// Replaces the policy of `identity` for `direction`; returns the id of
    /// each rule, for ``counts(ofRule:)``.
    @discardableResult
    public func setPolicy(for identity: Identity, direction: Direction = .egress, rules: [Rule], defaultDeny: Bool) throws(BPFError) -> [UInt16] {
        guard rules.count <= Self.maximumRules else {
            throw BPFError(.invalidArgument, operation: "set policy", subject: "\(identity)",
                           detail: "\(rules.count) rules; a policy holds at most \(Self.maximumRules)")
        }
        let known = state.withLock { $0.knownIdentities }
        for rule in rules {
            if let ports = rule.ports, ports.lowerBound == 0 {
                throw BPFError(.invalidArgument, operation: "set policy", subject: "\(identity)",
                               detail: "port \(ports) includes 0, which is no port; pass nil to match every port")
            }
            if case .redirect(let proxy) = rule.verdict { try requireRedirectable(rule, to: proxy, direction, identity) }
            if case .identity(let peer) = rule.peer { try IdentityPolicy.requireWorkloadIdentity(peer, "set policy") }
            if case .identity(let peer) = rule.peer, peer != .world, peer != .host, !known.contains(peer.rawValue) {
                throw BPFError(.notFound, operation: "set policy", subject: "\(identity)",
                               detail: "a rule names \(peer), which no workload or address has; assign or register it first")
            }
        }
        let owner = "\(identity.rawValue)/\(direction)"
        // The new rules take ids no rule in force has, so a connect racing the
        // update counts and redirects by the old set's rules or the new set's,
        // never a mix; the previous policy's ids are freed once it is replaced.
        // One lock over both, so concurrent updates of one policy free the ids
        // of the set they replaced in the kernel, not those of the one in force.
        return try state.withLock { (state) throws(BPFError) -> [UInt16] in
            guard let ids = state.ruleIDs.take(rules.count) else {
                throw BPFError(.mapFull, operation: "set policy", subject: "\(identity)",
                               detail: "all \(UInt16.max - 1) rule ids are in use; remove policies first")
            }
            do throws(BPFError) {
                try install(rules, ids: ids, for: identity, direction: direction, defaultDeny: defaultDeny)
            } catch {
                state.ruleIDs.giveBack(ids)
                throw error
            }
            state.ruleIDs.giveBack(state.ruleIDsInUse.updateValue(ids, forKey: owner) ?? [])
            return ids
        }
    }

    /// Writes rules under fresh `ids` (their counters zeroed, redirect rules'
    /// proxies) and then the policy set that uses them, in one map update.
    private func install(_ rules: [Rule], ids: [UInt16], for identity: Identity, direction: Direction, defaultDeny: Bool) throws(BPFError) {
        var set = IdentityPolicyObject.PolicySet(defaultDeny: defaultDeny ? 1 : 0, ruleCount: UInt32(rules.count))
        var compiled: [IdentityPolicyObject.PolicyRule] = []
        for (rule, id) in zip(rules, ids) {
            var entry = IdentityPolicyObject.PolicyRule(ruleId: id)
            switch rule.peer {
            case .any: break
            case .identity(let peer): entry.peerIdentity = peer.rawValue
            case .cidr(let cidr):
                let mask: UInt32 = cidr.prefixLength == 0 ? 0 : ~0 << (32 - cidr.prefixLength)
                entry.peerNetwork = cidr.network.networkOrder
                entry.peerMask = mask.bigEndian
            }
            if let ports = rule.ports {
                entry.portLow = ports.lowerBound
                entry.portHigh = ports.upperBound
            }
            entry.`protocol` = rule.transport?.rawValue ?? 0
            switch rule.verdict {
            case .allow: entry.verdict = UInt8(IdentityPolicyObject.Verdict.allow.rawValue)
            case .deny: entry.verdict = UInt8(IdentityPolicyObject.Verdict.deny.rawValue)
            case .redirect(let proxy):
                entry.verdict = UInt8(IdentityPolicyObject.Verdict.redirect.rawValue)
                try datapath.maps.ruleProxies.set(IdentityPolicyObject.Endpoint(address: proxy.address.networkOrderWords, port: proxy.port.bigEndian),
                                                  at: UInt32(id))
            }
            compiled.append(entry)
            try datapath.maps.ruleCounters.set(Array(repeating: .init(), count: datapath.maps.ruleCounters.cpuCount), at: UInt32(id))
        }
        set.rulesElements = compiled
        let table = direction == .egress ? datapath.maps.policies : datapath.maps.ingressPolicies
        try table.insert(set, for: identity.rawValue)
    }

    /// Refuses a redirect rule that could not work: on ingress, for other
    /// transports than TCP, to an IPv6 or port-0 listener, or without a
    /// ``ProxyRedirect`` whose proxy side would find the record.
    private func requireRedirectable(_ rule: Rule, to proxy: Endpoint, _ direction: Direction, _ identity: Identity) throws(BPFError) {
        func refuse(_ detail: String, hint: String? = nil) -> BPFError {
            BPFError(.invalidArgument, operation: "set policy", subject: "\(identity)", hint: hint, detail: detail)
        }
        guard proxyRedirect != nil else {
            throw refuse("a rule redirects to \(proxy), but this policy has no ProxyRedirect",
                         hint: "create the policy with IdentityPolicy(attachingTo:redirectingThrough:)")
        }
        guard direction == .egress else { throw refuse("a redirect rule applies to egress connections only") }
        guard rule.transport == .tcp else { throw refuse("a redirect rule must match TCP (transport: .tcp): the proxy takes connections") }
        guard proxy.address.isIPv4, proxy.port != 0 else { throw refuse("the proxy \(proxy) must be an IPv4 address with a port") }
    }

    /// Removes the policy of `identity` for `direction` (its connections are then allowed).
    @discardableResult
    public func removePolicy(for identity: Identity, direction: Direction = .egress) throws(BPFError) -> Bool {
        try state.withLock { (state) throws(BPFError) -> Bool in
            let removed = try (direction == .egress ? datapath.maps.policies : datapath.maps.ingressPolicies).remove(identity.rawValue)
            state.ruleIDs.giveBack(state.ruleIDsInUse.removeValue(forKey: "\(identity.rawValue)/\(direction)") ?? [])
            return removed
        }
    }

    /// What a rule decided, summed over CPUs.
    public func counts(ofRule id: UInt16) throws(BPFError) -> RuleCounts {
        let values = try datapath.maps.ruleCounters.values(at: UInt32(id))
        return RuleCounts(allowed: values.reduce(0) { $0 + $1.allowed }, denied: values.reduce(0) { $0 + $1.denied },
                          redirected: values.reduce(0) { $0 + $1.redirected })
    }

    /// Counters kept by the policy programs, over all rules.
    public struct Counters: Sendable, Equatable {
        /// Connections and datagrams allowed (redirected ones included).
        public var allowed: UInt64
        /// Connections and datagrams denied.
        public var denied: UInt64
        /// Connections and datagrams of cgroups without an identity (not policed).
        public var unmanaged: UInt64
        /// Flow events the ring buffer had no room for.
        public var eventsLost: UInt64
        /// Redirected connections whose record found no room: the connection
        /// reaches the proxy, which learns no original destination for it.
        public var redirectsUnrecorded: UInt64
    }

    /// The counters now, summed over CPUs.
    public func counters() throws(BPFError) -> Counters {
        let values = try datapath.maps.policyCounters.values()
        func value(_ counter: IdentityPolicyObject.PolicyCounter) -> UInt64 { values[Int(counter.rawValue)] }
        return Counters(allowed: value(.allowed), denied: value(.denied), unmanaged: value(.unmanaged), eventsLost: value(.eventsLost),
                        redirectsUnrecorded: value(.redirectUnrecorded))
    }

    /// The L3/L4 flow events (who connected to whom, with the verdict), for
    /// telemetry. The programs make events from the first call on, and keep
    /// making them after that reader is gone; until someone asks, no
    /// connection pays for a ring record nobody reads.
    public func flowEvents(bufferCapacity: Int = 65_536) throws(BPFError) -> RingBufferRecords<IdentityPolicyObject.FlowEvent> {
        try datapath.globals.flowEventsWanted.set(1)
        return try datapath.maps.flowEvents.records(as: IdentityPolicyObject.FlowEvent.self, bufferCapacity: bufferCapacity)
    }

    /// Detaches the programs now.
    public func detach() {
        for link in links { link.close() }
    }
}
