/// How much upstream work the proxy takes on at once, and how it is shared
/// among tenants: by ``TenantConfiguration/weight``, like CPU requests.
///
/// The unit is an *exchange*: an HTTP request from the moment it is routed
/// until its response ends, or an L4 connection for its whole life. Each
/// tenant is guaranteed its weighted share of ``maxConcurrentExchanges``
/// (at least one) and is admitted at once up to it, even while others are
/// using capacity they borrowed. Beyond its share a tenant borrows what is
/// idle; when the proxy is full its HTTP requests wait in a per-tenant queue
/// and each freed exchange goes to the waiting tenant with the fewest
/// exchanges per weight. A request that finds its tenant's queue full, or
/// that waits longer than ``maxQueueDelay``, is answered 503 with
/// `Retry-After`; an L4 connection that finds the proxy full beyond its
/// tenant's share is refused at once. Both are counted as shed
/// (``TenantStatistics/shedExchanges``).
///
/// Because guaranteed shares are honoured even while the capacity is
/// borrowed, the proxy carries at most twice ``maxConcurrentExchanges`` for
/// as long as the borrowed exchanges take to end.
public struct ProxyCapacity: Sendable, Equatable {
    /// Exchanges carried at once across all tenants (1 or more).
    public var maxConcurrentExchanges: Int
    /// HTTP requests a tenant may have waiting for an exchange; more are shed.
    public var maxQueuedPerTenant: Int
    /// The longest an HTTP request waits for an exchange before it is shed.
    public var maxQueueDelay: Duration
    /// What a 503 tells the client to wait before retrying (whole seconds, at least one).
    public var retryAfter: Duration

    /// Creates a capacity.
    public init(maxConcurrentExchanges: Int, maxQueuedPerTenant: Int = 64, maxQueueDelay: Duration = .seconds(1),
                retryAfter: Duration = .seconds(1)) {
        self.maxConcurrentExchanges = maxConcurrentExchanges
        self.maxQueuedPerTenant = maxQueuedPerTenant
        self.maxQueueDelay = maxQueueDelay
        self.retryAfter = retryAfter
    }

    /// Checks the values; the first problem is thrown.
    func validate() throws(ProxyConfigurationError) {
        func refuse(_ field: String, _ reason: String) -> ProxyConfigurationError {
            ProxyConfigurationError(tenant: nil, field: "capacity.\(field)", reason: reason)
        }
        guard (1...1_000_000).contains(maxConcurrentExchanges) else { throw refuse("maxConcurrentExchanges", "must be 1 to 1000000") }
        guard (0...1_000_000).contains(maxQueuedPerTenant) else { throw refuse("maxQueuedPerTenant", "must be 0 to 1000000") }
        guard maxQueueDelay > .zero, maxQueueDelay <= .seconds(3_600) else { throw refuse("maxQueueDelay", "must be positive and at most an hour") }
        guard retryAfter >= .seconds(1), retryAfter <= .seconds(86_400) else { throw refuse("retryAfter", "must be 1 second to a day") }
    }

    /// The `Retry-After` header's value: whole seconds, rounded up.
    var retryAfterSeconds: Int64 {
        let (seconds, attoseconds) = retryAfter.components
        return seconds + (attoseconds > 0 ? 1 : 0)
    }
}
