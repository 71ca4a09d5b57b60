import Synchronization

/// What one tenant's connections have done so far.
public struct TenantStatistics: Sendable, Equatable {
    /// Connections open now.
    public var activeConnections: Int
    /// Connections accepted and forwarded.
    public var acceptedConnections: Int
    /// Connections refused at accept because the tenant was at its connection limit.
    public var refusedConnections: Int
    /// Connections refused at accept because the tenant was over its connection rate.
    public var rateLimitedConnections: Int
    /// Times a connection's reading waited for the tenant's bandwidth.
    public var throttledReads: Int
    /// Connections closed because their upstream could not be reached.
    public var upstreamFailures: Int
    /// Connections closed because their original destination was unknown.
    public var missingOriginalDestinations: Int
    /// Bytes read from the tenant's clients.
    public var bytesFromClients: Int
    /// Bytes read from upstreams for them.
    public var bytesFromUpstreams: Int
}

/// The live counters behind ``TenantStatistics``.
final class TenantCounters: Sendable {
    let active = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let rateLimited = Atomic<Int>(0)
    let throttled = Atomic<Int>(0)
    let upstreamFailures = Atomic<Int>(0)
    let missingOriginalDestinations = Atomic<Int>(0)
    let bytesFromClients = Atomic<Int>(0)
    let bytesFromUpstreams = Atomic<Int>(0)

    var snapshot: TenantStatistics {
        TenantStatistics(
            activeConnections: active.load(ordering: .relaxed), acceptedConnections: accepted.load(ordering: .relaxed),
            refusedConnections: refused.load(ordering: .relaxed), rateLimitedConnections: rateLimited.load(ordering: .relaxed),
            throttledReads: throttled.load(ordering: .relaxed), upstreamFailures: upstreamFailures.load(ordering: .relaxed),
            missingOriginalDestinations: missingOriginalDestinations.load(ordering: .relaxed),
            bytesFromClients: bytesFromClients.load(ordering: .relaxed), bytesFromUpstreams: bytesFromUpstreams.load(ordering: .relaxed))
    }
}
