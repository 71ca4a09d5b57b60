/// Transparent redirect of workload connections to the per-node proxy, at
/// the socket level (no iptables).
///
/// Attach it to a cgroup that contains the workloads and the proxy; register
/// each workload with its tenant and the proxy's cgroup; add redirect rules.
/// A workload's `connect()` to a matching destination is rewritten to its
/// tenant's proxy listener. The proxy learns the original destination either
/// from ``originalDestination(client:proxy:)`` or, unmodified, from
/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, which the datapath answers. The
/// proxy's own connections are never redirected, so there are no loops.
///
/// Failure modes: a workload that is not registered, or a connection matching
/// no rule, is untouched (fail open). The original-destination tables evict
/// their oldest entries when full (entries also go when the connection
/// closes); an insert that fails outright is counted in
/// ``Counters/recordFailures`` and the connection is still redirected.
/// IPv4 destinations only, from IPv4 sockets and from IPv6 sockets using
/// IPv4-mapped addresses (`::ffff:a.b.c.d`); native IPv6 is not redirected.
public final class ProxyRedirect: Sendable {
    /// The loaded `proxy_redirect` object and its typed maps.
    public let datapath: ProxyRedirectObject.Loaded
    private let links: [BPFLink]

    /// Counters kept by the redirect programs.
    public struct Counters: Sendable, Equatable {
        /// `connect()` calls rewritten to a proxy.
        public var redirected: UInt64
        /// Workload `connect()` calls that matched no rule.
        public var passed: UInt64
        /// `connect()` calls of the proxy itself, never redirected.
        public var proxyBypassed: UInt64
        /// Original destinations recorded at establishment.
        public var recorded: UInt64
        /// `SO_ORIGINAL_DST` requests answered.
        public var originalDestinationAnswered: UInt64
        /// `SO_ORIGINAL_DST` requests for connections that were not redirected.
        public var originalDestinationMissed: UInt64
        /// Redirected connections whose original destination could not be recorded (a full table).
        public var recordFailures: UInt64
    }

    /// Loads the programs and attaches `connect4`, `sockops` and `getsockopt`
    /// to `cgroup` (they apply to its descendants too).
    public init(attachingTo cgroup: Cgroup) throws(BPFError) {
        datapath = try ProxyRedirectObject.open().load()
        let programs = datapath.programs
        links = [
            try programs.redirectConnect4.attach(to: cgroup),
            try programs.redirectConnect6.attach(to: cgroup),
            try programs.recordOriginalDestination.attach(to: cgroup),
            try programs.answerOriginalDestination.attach(to: cgroup),
        ]
    }

    /// Registers a workload cgroup: its connections follow `tenant`'s rules.
    public func register(workload: Cgroup, tenant: UInt32, identity: UInt32) throws(BPFError) {
        try datapath.maps.workloads.insert(.init(identity: identity, tenant: tenant), for: workload.id())
    }

    /// Registers the proxy's cgroup: its connections are never redirected.
    public func register(proxy: Cgroup) throws(BPFError) {
        let flags = ProxyRedirectObject.WorkloadFlags.workloadIsProxy.rawValue
        try datapath.maps.workloads.insert(.init(identity: 0, tenant: 0, flags: flags), for: proxy.id())
    }

    /// Forgets a workload or proxy cgroup.
    @discardableResult
    public func unregister(_ cgroup: Cgroup) throws(BPFError) -> Bool {
        try datapath.maps.workloads.remove(cgroup.id())
    }

    /// Redirects `tenant`'s connections to `destination` (and `port`, unless
    /// nil) to the proxy listener `proxy`. A rule for the same tenant and
    /// CIDR replaces the previous one: one port (or all) per tenant and CIDR,
    /// and the longest matching CIDR decides, so a /32 rule for one port
    /// hides a broader all-ports rule for that host's other ports.
    public func addRule(tenant: UInt32, destination: IPv4CIDR, port: UInt16? = nil, proxy: IPv4Endpoint) throws(BPFError) {
        guard proxy.port != 0 else {
            throw BPFError(.invalidArgument, operation: "add redirect rule", subject: "tenant \(tenant) \(destination)",
                           detail: "the proxy listener's port is 0")
        }
        guard port != 0 else {
            throw BPFError(.invalidArgument, operation: "add redirect rule", subject: "tenant \(tenant) \(destination)",
                           detail: "port 0 is not a destination port; pass nil to match every port")
        }
        let key = ProxyRedirectObject.RedirectKey(prefixlen: 32 + destination.prefixLength, tenant: tenant, address: destination.network.networkOrder)
        let target = ProxyRedirectObject.RedirectTarget(
            proxyAddress: proxy.address.networkOrder, proxyPort: proxy.port.bigEndian, matchPort: port ?? 0)
        try datapath.maps.redirectRules.insert(target, for: key)
    }

    /// Redirects `tenant`'s connections to one service (its address and port)
    /// to the proxy listener `proxy`. Attach ``ProxyRedirect`` before a
    /// ``ServiceLoadBalancer`` on the same cgroup, so it sees the service
    /// address before the balancer replaces it with a backend.
    public func addRule(tenant: UInt32, service: IPv4Endpoint, proxy: IPv4Endpoint) throws(BPFError) {
        try addRule(tenant: tenant, destination: IPv4CIDR(service.address.description + "/32"), port: service.port, proxy: proxy)
    }

    /// Removes a rule; false when there was none.
    @discardableResult
    public func removeRule(tenant: UInt32, destination: IPv4CIDR) throws(BPFError) -> Bool {
        try datapath.maps.redirectRules.remove(.init(prefixlen: 32 + destination.prefixLength, tenant: tenant, address: destination.network.networkOrder))
    }

    /// The original destination of a redirected connection, identified as the
    /// proxy's accepted socket sees it: the client's endpoint and the proxy
    /// listener's endpoint.
    public func originalDestination(client: IPv4Endpoint, proxy: IPv4Endpoint) throws(BPFError) -> IPv4Endpoint? {
        let key = ProxyRedirectObject.ProxiedConnection(
            clientAddress: client.address.networkOrder, proxyAddress: proxy.address.networkOrder,
            clientPort: client.port, proxyPort: proxy.port)
        return try datapath.maps.originalDestinations.lookup(key).map {
            IPv4Endpoint(IPv4Address(networkOrder: $0.address), port: UInt16(bigEndian: $0.port))
        }
    }

    /// Reads the counters.
    public func counters() throws(BPFError) -> Counters {
        let values = try datapath.maps.redirectCounters.values()
        func value(_ slot: ProxyRedirectObject.RedirectCounter) -> UInt64 { values[Int(slot.rawValue)] }
        return Counters(
            redirected: value(.connectsRedirected), passed: value(.connectsPassed), proxyBypassed: value(.proxyBypassed),
            recorded: value(.recorded), originalDestinationAnswered: value(.originalDstAnswered),
            originalDestinationMissed: value(.originalDstMissed), recordFailures: value(.recordFailed))
    }

    /// Detaches the programs now.
    public func detach() {
        for link in links { link.close() }
    }
}
