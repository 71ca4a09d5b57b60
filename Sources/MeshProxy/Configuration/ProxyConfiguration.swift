import MeshKernel

/// The whole configuration of a proxy: its tenants. Checked as a whole
/// before any of it applies.
public struct ProxyConfiguration: Sendable, Equatable {
    /// The tenants, each with its own listeners.
    public var tenants: [TenantConfiguration]
    /// How long a graceful shutdown waits for open connections to finish.
    public var drainTimeout: Duration
    /// The upstream work carried at once and its fair sharing among tenants;
    /// nil for no bound (tenants are then limited only by their own limits).
    public var capacity: ProxyCapacity?
    /// How long the splice loop of an L4 tenant (its plaintext connections,
    /// on a thread of its own) may poll for its next event before it sleeps,
    /// after it moved bytes and while such polls keep finding events: an
    /// upstream nearby often answers within microseconds, and sleeping and
    /// waking up again costs more than that (BENCHMARKS.md, fourteenth
    /// session). `.zero` never polls (HTTP tenants' loops follow
    /// ``httpSpliceSpin``: set both to zero for no polling at all). At most a
    /// millisecond; a change applies to running loops at once.
    public var spliceSpin: Duration
    /// The same for an HTTP tenant's splice loop: shorter by default, as an
    /// HTTP upstream answers later than an L4 peer, after it has parsed the
    /// request, and a poll that finds nothing costs CPU (BENCHMARKS.md,
    /// twenty-first session). A shared group's splice loop, serving the
    /// tenants that listen on the event loop it is beside, polls for the
    /// longer budget of their modes.
    public var httpSpliceSpin: Duration

    /// Creates a configuration.
    public init(tenants: [TenantConfiguration], drainTimeout: Duration = .seconds(10), capacity: ProxyCapacity? = nil,
                spliceSpin: Duration = .microseconds(3), httpSpliceSpin: Duration = .microseconds(1)) {
        self.tenants = tenants
        self.drainTimeout = drainTimeout
        self.capacity = capacity
        self.spliceSpin = spliceSpin
        self.httpSpliceSpin = httpSpliceSpin
    }

    /// The polling budget of a splice loop serving tenants of `mode`.
    func spliceSpin(for mode: TenantConfiguration.Mode) -> Duration {
        if case .http = mode { httpSpliceSpin } else { spliceSpin }
    }

    /// Each tenant's weight, by name.
    var weights: [String: Int] { Dictionary(tenants.map { ($0.name, $0.weight) }, uniquingKeysWith: { first, _ in first }) }

    /// Checks every tenant and their relations; the first problem is thrown.
    public func validate() throws(ProxyConfigurationError) {
        var names = Set<String>(), listeners = [Endpoint: String]()
        for tenant in tenants {
            func refuse(_ field: String, _ reason: String) -> ProxyConfigurationError {
                ProxyConfigurationError(tenant: tenant.name, field: field, reason: reason)
            }
            guard (1...63).contains(tenant.name.utf8.count),
                  tenant.name.utf8.allSatisfy({ (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }),
                  tenant.name.first != "-", tenant.name.last != "-" else {
                throw refuse("name", "must be 1 to 63 lowercase letters, digits and inner dashes")
            }
            guard names.insert(tenant.name).inserted else { throw refuse("name", "another tenant has this name") }
            for (index, listener) in tenant.listeners.enumerated() {
                let field = TenantConfiguration.listenerField(at: index)
                guard listener.port != 0 else { throw refuse(field, "the port is 0") }
                if let owner = listeners.updateValue(tenant.name, forKey: listener) {
                    throw refuse(field, owner == tenant.name ? "\(listener) is listed twice" : "\(listener) is already tenant \(owner)'s")
                }
            }
            if case .fixed(let upstream) = tenant.upstream {
                guard upstream.port != 0 else { throw refuse("upstream", "the port is 0") }
                guard !tenant.listeners.contains(upstream) else { throw refuse("upstream", "is one of the tenant's own listeners: a loop") }
            }
            if let maximum = tenant.limits.maxConnections, maximum < 1 { throw refuse("limits.maxConnections", "must be at least 1") }
            if let rate = tenant.limits.connectionsPerSecond, rate < 1 { throw refuse("limits.connectionsPerSecond", "must be at least 1") }
            if let rate = tenant.limits.bytesPerSecond, rate < 1_024 { throw refuse("limits.bytesPerSecond", "must be at least 1024") }
            if let rate = tenant.limits.requestsPerSecond {
                guard rate >= 1 else { throw refuse("limits.requestsPerSecond", "must be at least 1") }
                guard case .http = tenant.mode else { throw refuse("limits.requestsPerSecond", "applies to HTTP tenants only (a TCP tenant has connectionsPerSecond)") }
            }
            guard tenant.limits.maxBufferedBytes >= 4_096 else { throw refuse("limits.maxBufferedBytes", "must be at least 4096") }
            if let total = tenant.limits.maxTotalBufferedBytes, total < TenantBuffers.cappedReadSize {
                throw refuse("limits.maxTotalBufferedBytes", "must be at least \(TenantBuffers.cappedReadSize) (a read)")
            }
            guard (1...10_000).contains(tenant.weight) else { throw refuse("weight", "must be 1 to 10000") }
            if case .http(let routing) = tenant.mode { try routing.validate(tenant: tenant.name) }
            guard tenant.idleTimeout >= TenantConfiguration.shortestIdleTimeout, tenant.idleTimeout <= .seconds(7 * 86_400) else {
                throw refuse("idleTimeout", "must be at least \(TenantConfiguration.shortestIdleTimeout) and at most 7 days")
            }
            guard tenant.connectTimeout > .zero, tenant.connectTimeout <= .seconds(3_600) else {
                throw refuse("connectTimeout", "must be positive and at most an hour")
            }
        }
        guard drainTimeout >= .zero, drainTimeout <= .seconds(3_600) else {
            throw ProxyConfigurationError(tenant: nil, field: "drainTimeout", reason: "must be 0 to an hour")
        }
        for (field, spin) in [("spliceSpin", spliceSpin), ("httpSpliceSpin", httpSpliceSpin)] where spin < .zero || spin > SpliceLoop.longestSpin {
            throw ProxyConfigurationError(tenant: nil, field: field, reason: "must be 0 to a millisecond")
        }
        try capacity?.validate()
    }
}

/// Why a configuration was refused: which tenant, which field, and why. The
/// running configuration is untouched when one is thrown.
public struct ProxyConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The tenant at fault, or nil for the proxy as a whole.
    public var tenant: String?
    /// The field at fault, such as `listener` or `limits.maxConnections`.
    public var field: String
    /// What is wrong with it.
    public var reason: String

    /// Creates an error.
    public init(tenant: String?, field: String, reason: String) {
        self.tenant = tenant
        self.field = field
        self.reason = reason
    }

    public var description: String {
        "invalid proxy configuration: \(tenant.map { "tenant '\($0)' " } ?? "")\(field) \(reason)"
    }
}
