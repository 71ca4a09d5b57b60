import MeshKernel
import MeshTelemetry

/// How an HTTP tenant's requests are routed: the first route that matches a
/// request picks the cluster, and the cluster's endpoints take turns.
public struct HTTPRouting: Sendable, Equatable {
    /// The routes, in the order they are tried.
    public var routes: [HTTPRoute]
    /// The clusters the routes name.
    public var clusters: [String: HTTPCluster]
    /// The longest a request head may take to arrive (slow clients are closed with 408).
    public var requestHeadTimeout: Duration
    /// The largest request head accepted (larger ones get 431).
    public var maxHeadBytes: Int
    /// The longest an upstream may take to begin its response (504 after that).
    public var responseTimeout: Duration
    /// Who may send which requests; nil lets every request through.
    public var authorization: HTTPAuthorization?

    /// Creates the routing.
    public init(routes: [HTTPRoute], clusters: [String: HTTPCluster], requestHeadTimeout: Duration = .seconds(10), maxHeadBytes: Int = 16_384,
                responseTimeout: Duration = .seconds(30), authorization: HTTPAuthorization? = nil) {
        self.routes = routes
        self.clusters = clusters
        self.requestHeadTimeout = requestHeadTimeout
        self.maxHeadBytes = maxHeadBytes
        self.responseTimeout = responseTimeout
        self.authorization = authorization
    }

    /// The index of the first route matching a request whose `Host` is `host()`.
    /// (The path prefix is compared byte for byte; the request's host name is worked out only when a route names a host, and compared ignoring the case of ASCII letters only.)
    func routeIndex(host: () -> String?, path: String, header: (String) -> String?) -> Int? {
        var hostName: String??
        for (index, route) in routes.enumerated() {
            if let wanted = route.host {
                let name = hostName ?? host().flatMap(HTTPRequestHead.hostName)
                hostName = name
                guard let name, HTTPSyntax.equalsIgnoringASCIICase(wanted.utf8, name.utf8) else { continue }
            }
            if path.hasBytePrefix(route.pathPrefix), route.headers.allSatisfy({ header($0) == $1 }) { return index }
        }
        return nil
    }

    /// Checks the routing of `tenant`; the first problem is thrown.
    func validate(tenant: String) throws(ProxyConfigurationError) {
        func refuse(_ field: String, _ reason: String) -> ProxyConfigurationError {
            ProxyConfigurationError(tenant: tenant, field: field, reason: reason)
        }
        guard !routes.isEmpty else { throw refuse("http.routes", "at least one route is needed") }
        for (index, route) in routes.enumerated() {
            guard clusters[route.cluster] != nil else { throw refuse("http.routes[\(index)].cluster", "names no cluster: '\(route.cluster)'") }
            guard route.pathPrefix.hasPrefix("/") else { throw refuse("http.routes[\(index)].pathPrefix", "must start with /") }
            if let problem = route.headers.keys.sorted().lazy.compactMap(Self.fieldNameProblem).first {
                throw refuse("http.routes[\(index)].headers", problem)
            }
        }
        for (name, cluster) in clusters { try cluster.validate(name: name, refuse: refuse) }
        guard requestHeadTimeout > .zero, requestHeadTimeout <= .seconds(3_600) else {
            throw refuse("http.requestHeadTimeout", "must be positive and at most an hour")
        }
        guard (1_024...1_048_576).contains(maxHeadBytes) else { throw refuse("http.maxHeadBytes", "must be 1024 to 1048576") }
        guard responseTimeout > .zero, responseTimeout <= .seconds(3_600) else {
            throw refuse("http.responseTimeout", "must be positive and at most an hour")
        }
        for (index, rule) in (authorization?.rules ?? []).enumerated() {
            guard rule.pathPrefix.hasPrefix("/") else { throw refuse("http.authorization.rules[\(index)].pathPrefix", "must start with /") }
            guard rule.methods.allSatisfy({ !$0.isEmpty && $0 == $0.uppercased() }) else {
                throw refuse("http.authorization.rules[\(index)].methods", "must be upper-case method names")
            }
            if let problem = rule.headers.keys.sorted().lazy.compactMap(Self.fieldNameProblem).first {
                throw refuse("http.authorization.rules[\(index)].headers", problem)
            }
        }
    }

    /// Why `name` cannot name a header that routing, authorization or
    /// balancing reads, or nil when it can: a field name (RFC 9110 token) in
    /// lowercase, as requests' names are matched without changing their case.
    static func fieldNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "names an empty header" }
        guard name.utf8.allSatisfy({ HTTPSyntax.isTokenByte($0) && !(UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) else {
            return "header name '\(name)' must be a field name in lowercase"
        }
        return nil
    }
}

/// A route: which requests (by host, path prefix and exact header values) go to which cluster.
public struct HTTPRoute: Sendable, Equatable {
    /// The host the request names (its `Host` without the port), or nil for any.
    public var host: String?
    /// The beginning of the path.
    public var pathPrefix: String
    /// Headers that must be present with these exact values (names in lowercase; validation refuses others).
    public var headers: [String: String]
    /// The cluster the matching requests go to.
    public var cluster: String

    /// Creates a route.
    public init(host: String? = nil, pathPrefix: String = "/", headers: [String: String] = [:], cluster: String) {
        self.host = host
        self.pathPrefix = pathPrefix
        self.headers = headers
        self.cluster = cluster
    }
}
