import MeshKernel
import Synchronization

/// The upstream endpoints a route's requests go to, how one is chosen for
/// each request, and how connections to them are kept.
public struct HTTPCluster: Sendable, Equatable {
    /// How an endpoint is chosen for a request.
    public enum Balancing: Sendable, Equatable {
        /// Each endpoint in turn.
        case roundRobin
        /// The endpoint with the fewest of the tenant's requests in flight (in turn among equals).
        case leastRequest
        /// The same endpoint for the same key while the endpoints stay the same;
        /// when one goes, only its keys move (rendezvous hashing).
        case consistentHash(HashKey)
    }

    /// Passive health checking: an endpoint that fails this many requests in a
    /// row (its connect fails, or its connection breaks before any answer) is
    /// left out of the tenant's picks for a while. The last endpoints are never
    /// all left out: with every endpoint out, all of them are picked from again.
    public struct OutlierDetection: Sendable, Equatable {
        /// Failures in a row that take an endpoint out.
        public var consecutiveFailures: Int
        /// How long it stays out.
        public var ejectionDuration: Duration

        /// Creates the settings.
        public init(consecutiveFailures: Int = 3, ejectionDuration: Duration = .seconds(10)) {
            self.consecutiveFailures = consecutiveFailures
            self.ejectionDuration = ejectionDuration
        }
    }

    /// What a consistent hash is taken of.
    public enum HashKey: Sendable, Equatable {
        /// A request header's value, named in lowercase (requests without it go round robin).
        case header(String)
        /// The client's address.
        case sourceAddress
    }

    /// The upstream endpoints (none for an ``originalDestination(retries:maxIdleConnectionsPerEndpoint:idleConnectionTimeout:tls:)`` cluster).
    public var endpoints: [Endpoint]
    /// Whether each request goes to where its connection was going: the
    /// original destination the datapath recovered for the redirected
    /// connection (a service address is then balanced by the datapath, as
    /// the workload's own connect would have been), instead of to ``endpoints``.
    public var toOriginalDestination: Bool
    /// How an endpoint is chosen.
    public var balancing: Balancing
    /// Endpoints tried for one request when connecting fails (at most all of them).
    public var connectAttempts: Int
    /// Times a request without a body and with an idempotent method (GET, HEAD,
    /// OPTIONS, TRACE, PUT, DELETE) is sent again, to another endpoint where
    /// there is one, when its upstream connection breaks before any of the
    /// response arrived.
    public var retries: Int
    /// Idle keep-alive connections kept per endpoint for later requests (0: a connection per request).
    public var maxIdleConnectionsPerEndpoint: Int
    /// How long an idle connection is kept.
    public var idleConnectionTimeout: Duration
    /// Passive health checking; nil keeps every endpoint in the picks.
    public var outlierDetection: OutlierDetection?
    /// TLS to the endpoints; nil for plain TCP.
    public var tls: UpstreamTLS?

    /// Connections one request may try: `connectAttempts`, but no more than there are endpoints (one original destination).
    var attemptsPerRequest: Int { min(connectAttempts, toOriginalDestination ? 1 : endpoints.count) }

    /// Creates a cluster.
    public init(endpoints: [Endpoint], balancing: Balancing = .roundRobin, connectAttempts: Int = 2, retries: Int = 1,
                maxIdleConnectionsPerEndpoint: Int = 64, idleConnectionTimeout: Duration = .seconds(60),
                outlierDetection: OutlierDetection? = OutlierDetection(), tls: UpstreamTLS? = nil) {
        self.endpoints = endpoints
        self.balancing = balancing
        self.connectAttempts = connectAttempts
        self.retries = retries
        self.maxIdleConnectionsPerEndpoint = maxIdleConnectionsPerEndpoint
        self.idleConnectionTimeout = idleConnectionTimeout
        self.outlierDetection = outlierDetection
        self.tls = tls
        self.toOriginalDestination = false
    }

    /// A cluster without endpoints of its own, like Envoy's `ORIGINAL_DST`:
    /// each request goes to its connection's original destination, recovered
    /// as the proxy's ``OriginalDestinationSource`` tells it. A
    /// request on a connection that has none (one not redirected to the proxy)
    /// is answered 502. Connections to each destination are pooled as to an
    /// endpoint (8 idle at most by default: the destinations are whatever the
    /// clients connect to, and the pool forgets those without connections); a
    /// failed connect is not tried elsewhere (there is nowhere else).
    public static func originalDestination(retries: Int = 1, maxIdleConnectionsPerEndpoint: Int = 8,
                                           idleConnectionTimeout: Duration = .seconds(60), tls: UpstreamTLS? = nil) -> HTTPCluster {
        var cluster = HTTPCluster(endpoints: [], connectAttempts: 1, retries: retries, maxIdleConnectionsPerEndpoint: maxIdleConnectionsPerEndpoint,
                                  idleConnectionTimeout: idleConnectionTimeout, outlierDetection: nil, tls: tls)
        cluster.toOriginalDestination = true
        return cluster
    }

    func validate(name: String, refuse: (String, String) -> ProxyConfigurationError) throws(ProxyConfigurationError) {
        if toOriginalDestination {
            // (What chooses among endpoints has nothing to choose from.)
            guard endpoints.isEmpty else { throw refuse("http.clusters.\(name).endpoints", "must be empty: the cluster goes to each connection's original destination") }
            guard balancing == .roundRobin, connectAttempts == 1, outlierDetection == nil else {
                throw refuse("http.clusters.\(name)", "goes to each connection's original destination: no balancing, connect attempts or outlier detection")
            }
        } else {
            guard !endpoints.isEmpty else { throw refuse("http.clusters.\(name)", "has no endpoints") }
        }
        guard endpoints.allSatisfy({ $0.port != 0 }) else { throw refuse("http.clusters.\(name)", "has an endpoint with port 0") }
        guard connectAttempts >= 1 else { throw refuse("http.clusters.\(name).connectAttempts", "must be at least 1") }
        guard (0...10).contains(retries) else { throw refuse("http.clusters.\(name).retries", "must be 0 to 10") }
        guard (0...10_000).contains(maxIdleConnectionsPerEndpoint) else {
            throw refuse("http.clusters.\(name).maxIdleConnectionsPerEndpoint", "must be 0 to 10000")
        }
        guard idleConnectionTimeout > .zero, idleConnectionTimeout <= .seconds(3_600) else {
            throw refuse("http.clusters.\(name).idleConnectionTimeout", "must be positive and at most an hour")
        }
        if let detection = outlierDetection {
            guard (1...1_000).contains(detection.consecutiveFailures) else {
                throw refuse("http.clusters.\(name).outlierDetection.consecutiveFailures", "must be 1 to 1000")
            }
            guard detection.ejectionDuration > .zero, detection.ejectionDuration <= .seconds(3_600) else {
                throw refuse("http.clusters.\(name).outlierDetection.ejectionDuration", "must be positive and at most an hour")
            }
        }
        if case .consistentHash(.header(let header)) = balancing, let problem = HTTPRouting.fieldNameProblem(header) {
            throw refuse("http.clusters.\(name).balancing", problem)
        }
    }

    /// The endpoint for a request, leaving out those already tried for it.
    ///
    /// - Parameters:
    ///   - turn: the cluster's next round-robin turn (taken only when needed).
    ///   - inFlight: the tenant's requests in flight to an endpoint.
    ///   - key: the request's hash key, if it has one.
    func pick(excluding tried: Set<Endpoint>, turn: () -> Int, inFlight: (Endpoint) -> Int, key: String?) -> Endpoint? {
        // One endpoint: nothing to balance (and no turn to take).
        if endpoints.count == 1 { return tried.contains(endpoints[0]) ? nil : endpoints[0] }
        let candidates = tried.isEmpty ? endpoints : endpoints.filter { !tried.contains($0) }
        guard !candidates.isEmpty else { return nil }
        switch balancing {
        case .roundRobin:
            return candidates[turn() % candidates.count]
        case .leastRequest:
            let loads = candidates.map(inFlight)
            let fewest = loads.min()!
            let least = zip(candidates, loads).filter { $0.1 == fewest }.map(\.0)
            return least[turn() % least.count]
        case .consistentHash:
            guard let key else { return candidates[turn() % candidates.count] }
            // Rendezvous hashing: each endpoint's score for the key (the key hashed once); the highest wins.
            let keyHash = Self.fnv1a(key.utf8)
            return candidates.map { ($0, Self.score(keyHash, $0)) }.max { $0.1 < $1.1 }?.0
        }
    }

    /// A stable 64-bit score of a key's hash and an endpoint (FNV-1a over the
    /// endpoint's address and port, then a final mix), the same in every process.
    static func score(_ keyHash: UInt64, _ endpoint: Endpoint) -> UInt64 {
        let address = endpoint.address.mapped
        var hash = withUnsafeBytes(of: (address.high.bigEndian, address.low.bigEndian, endpoint.port.bigEndian)) { fnv1a($0, from: keyHash) }
        // A final mix, so endpoints that differ in one byte spread apart.
        hash ^= hash >> 33
        hash &*= 0xff51_afd7_ed55_8ccd
        hash ^= hash >> 33
        return hash
    }

    /// FNV-1a over `bytes`, continuing from `hash`.
    private static func fnv1a(_ bytes: some Sequence<UInt8>, from hash: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        bytes.reduce(hash) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }
}
