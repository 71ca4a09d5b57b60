import Synchronization

/// Transparent redirect of workload connections to the per-node proxy, at
/// the socket level (no iptables).
///
/// Attach it to a cgroup that contains the workloads; register each workload
/// with its tenant, and the proxy's cgroup; add redirect rules. A workload's
/// `connect()` to a matching destination is rewritten to its tenant's proxy
/// listener, and the connection's record (original destination, workload
/// identity and tenant) is kept by the socket's cookie. The proxy's side
/// learns it from the connection's SYN and answers
/// ``originalDestination(client:proxy:)`` and, for unmodified proxies,
/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`. The proxy's own connections are
/// never redirected, so there are no loops.
///
/// Programs: `connect4` and `connect6` on the workloads' cgroup; on each
/// registered proxy's cgroup `cgroup_skb/ingress` (learns from SYNs),
/// `sockops` (forgets a connection when it closes) and `getsockopt`. A
/// workload connection that is not redirected pays for the `connect`
/// programs only. The proxy must share the workloads' network namespace (a
/// per-node proxy does), since its side finds the client's socket by 4-tuple.
///
/// Failure modes: a workload that is not registered, or a connection matching
/// no rule, is untouched (fail open). The original-destination table evicts
/// its least recently used entries when full (entries also go when the
/// connection closes); a record that cannot be kept is counted in
/// ``Counters/recordFailures`` and the connection is still redirected. A
/// redirected connection whose record was evicted, or that reached a proxy
/// cgroup that is not registered, arrives without an original destination,
/// and the proxy refuses it (fails closed for that connection only).
///
/// IPv4 and IPv6: rules on IPv4 networks apply to IPv4 sockets and to IPv6
/// sockets reaching IPv4 destinations through mapped addresses
/// (`::ffff:a.b.c.d`); rules on IPv6 networks to IPv6 sockets. The proxy
/// gets IPv6 originals from `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`.
public final class ProxyRedirect: Sendable {
    /// The loaded `proxy_redirect` object and its typed maps.
    public let datapath: ProxyRedirectObject.Loaded
    /// The cgroup the `connect` programs are attached to.
    public let cgroup: Cgroup
    /// The datapath's records of the connections this redirect sent to a proxy.
    public let records: RedirectRecords
    private let links: [BPFLink]
    /// The proxy side's programs on each registered proxy cgroup, by cgroup id.
    private let proxyLinks = Mutex<[UInt64: [BPFLink]]>([:])

    /// Counters kept by the redirect programs.
    public struct Counters: Sendable, Equatable {
        /// `connect()` calls rewritten to a proxy.
        public var redirected: UInt64
        /// Workload `connect()` calls that matched no rule.
        public var passed: UInt64
        /// `connect()` calls of the proxy itself, never redirected.
        public var proxyBypassed: UInt64
        /// Original destinations learned on a proxy's side (from a redirected connection's SYN).
        public var recorded: UInt64
        /// `SO_ORIGINAL_DST` requests answered.
        public var originalDestinationAnswered: UInt64
        /// `SO_ORIGINAL_DST` requests for connections that were not redirected.
        public var originalDestinationMissed: UInt64
        /// Redirected connections whose record could not be kept (a table insert refused).
        public var recordFailures: UInt64
    }

    /// Loads the programs and attaches `connect4` and `connect6` to `cgroup`
    /// (they apply to its descendants too).
    ///
    /// - Parameters:
    ///   - cgroup: the workloads.
    ///   - ruleCapacity: redirect rules, across all tenants.
    ///   - connectionCapacity: redirected connections whose record is held
    ///     at once, on each side (least recently used go first).
    public init(attachingTo cgroup: Cgroup, ruleCapacity: Int = 4_096, connectionCapacity: Int = 65_536) throws(BPFError) {
        let skeleton = try ProxyRedirectObject.open()
        try skeleton.maps.redirectRules.setMaxEntries(ruleCapacity)
        try skeleton.maps.pendingRedirects.setMaxEntries(connectionCapacity)
        try skeleton.maps.originalDestinations.setMaxEntries(connectionCapacity)
        datapath = try skeleton.load()
        records = RedirectRecords(table: datapath.maps.originalDestinations)
        self.cgroup = cgroup
        let programs = datapath.programs
        links = [
            try programs.redirectConnect4.attach(to: cgroup),
            try programs.redirectConnect6.attach(to: cgroup),
        ]
    }

    /// Registers a workload cgroup: its connections follow `tenant`'s rules.
    public func register(workload: Cgroup, tenant: UInt32, identity: UInt32) throws(BPFError) {
        try datapath.maps.workloads.insert(.init(identity: identity, tenant: tenant), for: workload.id())
    }

    /// Registers the proxy's cgroup: its connections are never redirected,
    /// and the proxy's side programs are attached to it (registering it again
    /// attaches nothing more). They follow the cgroup a socket was *made* in:
    /// the proxy's listeners must be created in this cgroup (their accepted
    /// sockets stay with them). The proxy then runs an ingress program on
    /// every packet it receives (a SYN check; the rest leave after a few loads).
    public func register(proxy: Cgroup) throws(BPFError) {
        let id = try proxy.id()
        let flags = ProxyRedirectObject.WorkloadFlags.workloadIsProxy.rawValue
        try proxyLinks.withLock { (attached) throws(BPFError) in
            try datapath.maps.workloads.insert(.init(identity: 0, tenant: 0, flags: flags), for: id)
            guard attached[id] == nil else { return }
            let programs = datapath.programs
            do throws(BPFError) {
                // Links made before a failing attach detach as they are released.
                attached[id] = try [programs.learnOriginalDestination, programs.forgetOriginalDestination, programs.answerOriginalDestination]
                    .map { (program) throws(BPFError) in try program.attach(to: proxy) }
            } catch {
                _ = try? datapath.maps.workloads.remove(id)
                throw error
            }
        }
    }

    /// Forgets a workload or proxy cgroup. A proxy's programs are detached:
    /// records of its connections still open are no longer removed when they
    /// close and stay until the table's least recently used entries make room.
    @discardableResult
    public func unregister(_ cgroup: Cgroup) throws(BPFError) -> Bool {
        let id = try cgroup.id()
        return try proxyLinks.withLock { (attached) throws(BPFError) in
            for link in attached.removeValue(forKey: id) ?? [] { link.close() }
            return try datapath.maps.workloads.remove(id)
        }
    }

    /// Redirects `tenant`'s connections to `destination` (and `port`, unless
    /// nil) to the proxy listener `proxy`. A rule for the same tenant and
    /// CIDR replaces the previous one: one port (or all) per tenant and CIDR,
    /// and the longest matching CIDR decides, so a /32 rule for one port
    /// hides a broader all-ports rule for that host's other ports. The proxy
    /// listener is of the network's family (a socket cannot change family at
    /// connect, and the proxy asks `SOL_IP` or `SOL_IPV6` by its own socket's
    /// family); an IPv6 rule never applies to IPv4 destinations, even `::/0`.
    public func addRule(tenant: UInt32, destination: CIDR, port: UInt16? = nil, proxy: Endpoint) throws(BPFError) {
        try insertRule(tenant: tenant, destination: destination, port: port, proxy: proxy, mode: .any)
    }

    /// Writes a rule; with `.noExist` the kernel refuses one that exists for exactly this tenant and network.
    private func insertRule(tenant: UInt32, destination: CIDR, port: UInt16?, proxy: Endpoint, mode: UpdateMode) throws(BPFError) {
        func refuse(_ detail: String) -> BPFError {
            BPFError(.invalidArgument, operation: "add redirect rule", subject: "tenant \(tenant) \(destination)", detail: detail)
        }
        guard proxy.port != 0 else { throw refuse("the proxy listener's port is 0") }
        guard port != 0 else { throw refuse("port 0 is not a destination port; pass nil to match every port") }
        guard proxy.address.isIPv4 == destination.network.isIPv4 else {
            throw refuse("the proxy \(proxy) is not of the network's address family")
        }
        let target = ProxyRedirectObject.RedirectTarget(
            proxy: .init(address: proxy.address.networkOrderWords, port: proxy.port.bigEndian), matchPort: port ?? 0)
        try datapath.maps.redirectRules.insert(target, for: Self.ruleKey(tenant, destination), mode: mode)
    }

    /// Redirects `tenant`'s connections to a service of `balancer` (its
    /// address and port) to the proxy listener `proxy`. The proxy recovers
    /// the service address as the original destination and connects to it,
    /// and the balancer then picks the backend for the proxy's connection.
    ///
    /// Fails with ``BPFError/Code/keyNotFound`` if `balancer` has no such TCP
    /// service; with ``BPFError/Code/keyExists`` if the tenant already has a
    /// rule for the service's address (rules are one per tenant and network,
    /// so it would be replaced); and with ``BPFError/Code/invalidArgument``
    /// unless this redirect runs first: attached to the same cgroup before
    /// the balancer (programs run in attach order), or to a descendant of the balancer's.
    public func addRule(tenant: UInt32, service: Endpoint, of balancer: ServiceLoadBalancer, proxy: Endpoint) throws(BPFError) {
        guard balancer.contains(service: service, protocol: .tcp) else {
            throw BPFError(.keyNotFound, operation: "add redirect rule", subject: "tenant \(tenant) service \(service)",
                           detail: "the load balancer has no TCP service \(service)")
        }
        guard try runsBefore(balancer, family: service.address) else {
            throw BPFError(.invalidArgument, operation: "add redirect rule", subject: "tenant \(tenant) service \(service)",
                           hint: "create the ProxyRedirect before the ServiceLoadBalancer on the same cgroup, or attach it to a child cgroup",
                           detail: "the load balancer runs before the redirect and would replace the service address first")
        }
        let host = CIDR(host: service.address)
        // The kernel refuses an exact duplicate (an LPM lookup would answer with a broader rule too).
        do throws(BPFError) {
            try insertRule(tenant: tenant, destination: host, port: service.port, proxy: proxy, mode: .noExist)
        } catch where error.code == .keyExists {
            throw BPFError(.keyExists, operation: "add redirect rule", subject: "tenant \(tenant) service \(service)",
                           detail: "the tenant already has a rule for \(host); remove it first")
        }
    }

    /// Removes a rule; false when there was none.
    @discardableResult
    public func removeRule(tenant: UInt32, destination: CIDR) throws(BPFError) -> Bool {
        try datapath.maps.redirectRules.remove(Self.ruleKey(tenant, destination))
    }

    /// The original destination of a redirected connection, identified as the
    /// proxy's accepted socket sees it: the client's endpoint and the proxy
    /// listener's endpoint.
    public func originalDestination(client: Endpoint, proxy: Endpoint) throws(BPFError) -> Endpoint? {
        try connection(client: client, proxy: proxy)?.originalDestination
    }

    /// What the datapath recorded of a redirected connection — its original
    /// destination and the identity and tenant of the workload that made it —
    /// identified as the proxy's accepted socket sees it; nil when it was not
    /// redirected (or has closed).
    public func connection(client: Endpoint, proxy: Endpoint) throws(BPFError) -> RedirectedConnection? {
        try records.connection(client: client, proxy: proxy)
    }

    /// Pins the records' table in `folder` (as ``RedirectRecords/pinName``),
    /// for a proxy in another process to read (``RedirectRecords/init(pinnedIn:)``).
    /// The pin outlives this redirect: the table stays, no longer updated,
    /// until the pin is removed (``PinFolder/remove()``) or replaced: a
    /// redirect made after it (an agent restarted) pins its own table
    /// `replacing` the old one, and the proxy's ``RedirectRecords`` go on
    /// with it. Anything else already pinned under that name is removed when
    /// `replacing`, else it fails with ``BPFError/Code/pinExists``.
    public func pinRecords(in folder: PinFolder, replacing: Bool = false) throws(BPFError) {
        let path = try folder.makeRoom(for: RedirectRecords.pinName, subject: "the records' table", replacing: replacing,
                                       hint: "or pin with replacing: true")
        try datapath.maps.originalDestinations.map.pin(at: path)
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

    /// The LPM key of a rule: the tenant's 32 bits, then the network in mapped form.
    private static func ruleKey(_ tenant: UInt32, _ destination: CIDR) -> ProxyRedirectObject.RedirectKey {
        .init(prefixlen: 32 + destination.mappedPrefixLength, tenant: tenant, address: destination.network.networkOrderWords)
    }

    /// Whether this redirect's connect programs run before `balancer`'s for
    /// sockets of the cgroup the balancer is attached to — for an IPv4
    /// service both `connect4` and `connect6` (dual-stack sockets reach it too).
    private func runsBefore(_ balancer: ServiceLoadBalancer, family address: IPAddress) throws(BPFError) -> Bool {
        let (mine, theirs) = (try cgroup.id(), try balancer.cgroup.id())
        guard mine == theirs else {
            // Descendants' programs run before their ancestors'.
            return cgroup.path.hasPrefix(balancer.cgroup.path.hasSuffix("/") ? balancer.cgroup.path : balancer.cgroup.path + "/")
        }
        var hooks: [(AttachType, BPFProgram, BPFProgram)] = [
            (.cgroupConnect6, datapath.programs.redirectConnect6, balancer.datapath.programs.balanceConnect6),
        ]
        if address.isIPv4 { hooks.append((.cgroupConnect4, datapath.programs.redirectConnect4, balancer.datapath.programs.balanceConnect4)) }
        for (attachType, redirect, balance) in hooks {
            let order = try cgroup.attachedProgramIDs(attachType)
            guard let first = redirect.id.flatMap(order.firstIndex(of:)), let second = balance.id.flatMap(order.firstIndex(of:)),
                  first < second else { return false }
        }
        return true
    }

    /// Detaches the programs now, the proxies' too.
    public func detach() {
        for link in links { link.close() }
        proxyLinks.withLock { attached in
            for link in attached.values.joined() { link.close() }
            attached.removeAll()
        }
    }
}

/// A connection the datapath redirected to the node proxy, as it recorded it.
public struct RedirectedConnection: Sendable, Hashable {
    /// Where the workload connected to.
    public var originalDestination: Endpoint
    /// The connecting workload's identity (``ProxyRedirect/register(workload:tenant:identity:)``).
    public var sourceIdentity: UInt32
    /// The connecting workload's tenant.
    public var sourceTenant: UInt32

    /// Creates a record.
    public init(originalDestination: Endpoint, sourceIdentity: UInt32, sourceTenant: UInt32) {
        self.originalDestination = originalDestination
        self.sourceIdentity = sourceIdentity
        self.sourceTenant = sourceTenant
    }
}
