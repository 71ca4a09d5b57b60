import CoreMetrics
import MeshTelemetry
import NIOCore
import Synchronization

/// What one tenant's connections have done so far.
public struct TenantStatistics: Sendable, Equatable {
    /// Connections open now.
    public var activeConnections: Int
    /// Connections admitted (within the tenant's limits); those that then
    /// failed upstream or had no original destination are among them.
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
    /// Connections refused at accept because the datapath recorded them as
    /// another tenant's workload's (``TenantConfiguration/datapathTenant``).
    public var foreignTenantConnections: Int
    /// Bytes read from the tenant's clients.
    public var bytesFromClients: Int
    /// Bytes read from upstreams for them.
    public var bytesFromUpstreams: Int
    /// HTTP mode: requests sent on to a cluster.
    public var requestsRouted: Int
    /// HTTP mode: requests answered 404 because no route matched.
    public var requestsWithoutRoute: Int
    /// HTTP mode: requests refused as malformed, too large or too slow (400, 431, 408).
    public var badRequests: Int
    /// Exchanges shed because the proxy was at its capacity beyond the tenant's
    /// share (``ProxyCapacity``): HTTP requests answered 503, L4 connections refused.
    public var shedExchanges: Int
    /// TLS handshakes refused: failed, too slow, no certificate for the
    /// server name, or a client identity that is not allowed.
    public var tlsRefusals: Int
    /// HTTP mode: requests refused by the tenant's authorization (403).
    public var forbiddenRequests: Int
    /// HTTP mode: requests over the tenant's request rate (429).
    public var rateLimitedRequests: Int
    /// HTTP mode: requests sent again after their upstream connection broke before responding.
    public var retriedRequests: Int
    /// HTTP mode: times an endpoint was taken out by outlier detection.
    public var endpointEjections: Int
    /// Bytes the tenant's connections hold in the proxy now: read from one
    /// side and not yet taken by the other side's socket.
    public var bufferedBytes: Int
    /// Times a connection's reading waited because the tenant held its
    /// ``TenantLimits/maxTotalBufferedBytes``.
    public var bufferWaits: Int
    /// CPU time the tenant's own thread has used (the kernel's count); nil
    /// when tenants share the proxy's event loops.
    public var cpuTime: Duration? = nil
    /// Whether the tenant's thread is demoted now: over its weighted share of
    /// a contended CPU while another tenant waits, it runs at the bottom of
    /// the kernel's priorities (see ``MeshProxy/init(configuration:originalDestinations:group:logger:metrics:exchanges:)``).
    public var isDemoted = false
}

/// The live counters behind ``TenantStatistics``, also recorded through
/// swift-metrics when the proxy was given a factory.
final class TenantCounters: Sendable {
    /// What happened to a connection at admission.
    /// (Numbered from 0: an outcome is its counter's index, so counting one hashes nothing.)
    enum Outcome: Int, CaseIterable {
        case accepted, refusedLimit, refusedRate, upstreamFailed, noOriginalDestination
        /// Refused at accept: the datapath recorded another tenant's workload (``TenantConfiguration/datapathTenant``).
        case foreignTenant
        /// HTTP mode: a request sent to a cluster, answered 404 for want of a route, or refused as malformed (400, 408, 431).
        case requestRouted, noRoute, badRequest
        /// Shed for want of capacity (HTTP 503, L4 refused).
        case shed
        /// A TLS handshake refused (failed, too slow, no certificate, identity not allowed).
        case tlsRefused
        /// HTTP mode: a request refused by authorization (403).
        case forbidden
        /// HTTP mode: a request over the tenant's request rate (429).
        case rateLimitedRequest
        /// HTTP mode: a request sent again after its upstream connection broke.
        case retried
        /// HTTP mode: an endpoint taken out by outlier detection.
        case endpointEjected

        /// The outcome as a metric label.
        var label: String {
            switch self {
            case .accepted: "accepted"
            case .refusedLimit: "refused_limit"
            case .refusedRate: "refused_rate"
            case .upstreamFailed: "upstream_failed"
            case .noOriginalDestination: "no_original_destination"
            case .foreignTenant: "foreign_tenant"
            case .requestRouted: "request_routed"
            case .noRoute: "no_route"
            case .badRequest: "bad_request"
            case .shed: "shed"
            case .tlsRefused: "tls_refused"
            case .forbidden: "forbidden"
            case .rateLimitedRequest: "rate_limited_request"
            case .retried: "retried"
            case .endpointEjected: "endpoint_ejected"
            }
        }
    }

    let active = Atomic<Int>(0)
    /// The bytes the tenant's connections hold, against its cap (``TenantLimits/maxTotalBufferedBytes``).
    let buffers: TenantBuffers
    private let accepted = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)
    private let rateLimited = Atomic<Int>(0)
    private let throttled = Atomic<Int>(0)
    private let upstreamFailures = Atomic<Int>(0)
    private let missingOriginalDestinations = Atomic<Int>(0)
    private let foreignTenant = Atomic<Int>(0)
    private let bytesFromClients = Atomic<Int>(0)
    private let bytesFromUpstreams = Atomic<Int>(0)
    private let routed = Atomic<Int>(0)
    private let unrouted = Atomic<Int>(0)
    private let malformed = Atomic<Int>(0)
    private let shed = Atomic<Int>(0)
    private let tlsRefused = Atomic<Int>(0)
    private let forbidden = Atomic<Int>(0)
    private let requestsOverRate = Atomic<Int>(0)
    private let retried = Atomic<Int>(0)
    private let ejections = Atomic<Int>(0)
    private let metrics: Metrics?
    private let tenant: String
    private let factory: (any MetricsFactory)?
    /// Whether ``httpAnswered(method:status:duration:)`` records anything (a
    /// metrics factory was given): without one, nobody needs requests timed.
    let recordsHTTPRequests: Bool
    /// HTTP mode: counter and timer per (method, status), made on first use.
    private let httpSeries = Mutex<[Int: (Counter, Timer)]>([:])

    /// The swift-metrics side: `mesh_proxy_connections_active{tenant}`,
    /// `mesh_proxy_connections_total{tenant,outcome}`,
    /// `mesh_proxy_bytes_total{tenant,direction}`, `mesh_proxy_throttled_reads_total{tenant}`
    /// (and, through ``buffers``, `mesh_proxy_buffer_waits_total{tenant}`).
    private struct Metrics: Sendable {
        let active: Meter
        /// By ``Outcome/rawValue``.
        let outcomes: [Counter]
        let fromClients: Counter
        let fromUpstreams: Counter
        let throttled: Counter
    }

    init(tenant: String, factory: (any MetricsFactory)?) {
        self.tenant = tenant
        self.factory = factory
        recordsHTTPRequests = factory != nil
        buffers = TenantBuffers(waitsMetric: factory.map { Counter(label: "mesh_proxy_buffer_waits_total", dimensions: [("tenant", tenant)], factory: $0) })
        metrics = factory.map { factory in
            Metrics(
                active: Meter(label: "mesh_proxy_connections_active", dimensions: [("tenant", tenant)], factory: factory),
                outcomes: Outcome.allCases.map { outcome in
                    Counter(label: "mesh_proxy_connections_total", dimensions: [("tenant", tenant), ("outcome", outcome.label)], factory: factory)
                },
                fromClients: Counter(label: "mesh_proxy_bytes_total", dimensions: [("tenant", tenant), ("direction", "from_client")], factory: factory),
                fromUpstreams: Counter(label: "mesh_proxy_bytes_total", dimensions: [("tenant", tenant), ("direction", "from_upstream")], factory: factory),
                throttled: Counter(label: "mesh_proxy_throttled_reads_total", dimensions: [("tenant", tenant)], factory: factory))
        }
    }

    /// Counts a connection's admission outcome.
    func record(_ outcome: Outcome) {
        switch outcome {
        case .accepted:
            accepted.add(1, ordering: .relaxed)
            let now = active.add(1, ordering: .relaxed).newValue
            metrics?.active.set(now)
        case .refusedLimit: refused.add(1, ordering: .relaxed)
        case .refusedRate: rateLimited.add(1, ordering: .relaxed)
        case .upstreamFailed: upstreamFailures.add(1, ordering: .relaxed)
        case .noOriginalDestination: missingOriginalDestinations.add(1, ordering: .relaxed)
        case .foreignTenant: foreignTenant.add(1, ordering: .relaxed)
        case .requestRouted: routed.add(1, ordering: .relaxed)
        case .noRoute: unrouted.add(1, ordering: .relaxed)
        case .badRequest: malformed.add(1, ordering: .relaxed)
        case .shed: shed.add(1, ordering: .relaxed)
        case .tlsRefused: tlsRefused.add(1, ordering: .relaxed)
        case .forbidden: forbidden.add(1, ordering: .relaxed)
        case .rateLimitedRequest: requestsOverRate.add(1, ordering: .relaxed)
        case .retried: retried.add(1, ordering: .relaxed)
        case .endpointEjected: ejections.add(1, ordering: .relaxed)
        }
        metrics?.outcomes[outcome.rawValue].increment()
    }

    /// An admitted connection closed.
    func closed() {
        let now = active.add(-1, ordering: .relaxed).newValue
        metrics?.active.set(now)
    }

    func bytesFromClient(_ count: Int) {
        bytesFromClients.add(count, ordering: .relaxed)
        metrics?.fromClients.increment(by: Int64(count))
    }

    func bytesFromUpstream(_ count: Int) {
        bytesFromUpstreams.add(count, ordering: .relaxed)
        metrics?.fromUpstreams.increment(by: Int64(count))
    }

    /// HTTP mode: one answered request, `mesh_proxy_http_requests_total` and
    /// `mesh_proxy_http_request_duration_seconds` by tenant, method (standard ones,
    /// else `_OTHER`) and status (three digits, as parsed and as the proxy answers).
    func httpAnswered(method: String, status: Int, duration: Duration) {
        guard let factory else { return }
        assert((100...999).contains(status), "status \(status) has not three digits")
        let methodIndex = HTTPRequestHead.standardMethodIndex(method)
        // (A status has three digits: method and status make one number, with nothing formatted or hashed as text.)
        let key = (methodIndex ?? HTTPRequestHead.standardMethods.count) &* 1000 &+ status
        let (counter, timer) = httpSeries.withLock { series in
            if let existing = series[key] { return existing }
            let label = HTTPRequestHead.methodLabel(standardIndex: methodIndex)
            let dimensions = [("tenant", tenant), ("http_request_method", label), ("http_response_status_code", String(status))]
            let made = (Counter(label: "mesh_proxy_http_requests_total", dimensions: dimensions, factory: factory),
                        Timer(label: "mesh_proxy_http_request_duration_seconds", dimensions: dimensions, factory: factory))
            series[key] = made
            return made
        }
        counter.increment()
        timer.recordNanoseconds(TimeAmount(duration).nanoseconds)
    }

    func throttledRead() {
        throttled.add(1, ordering: .relaxed)
        metrics?.throttled.increment()
    }

    var snapshot: TenantStatistics {
        TenantStatistics(
            activeConnections: active.load(ordering: .relaxed), acceptedConnections: accepted.load(ordering: .relaxed),
            refusedConnections: refused.load(ordering: .relaxed), rateLimitedConnections: rateLimited.load(ordering: .relaxed),
            throttledReads: throttled.load(ordering: .relaxed), upstreamFailures: upstreamFailures.load(ordering: .relaxed),
            missingOriginalDestinations: missingOriginalDestinations.load(ordering: .relaxed),
            foreignTenantConnections: foreignTenant.load(ordering: .relaxed),
            bytesFromClients: bytesFromClients.load(ordering: .relaxed), bytesFromUpstreams: bytesFromUpstreams.load(ordering: .relaxed),
            requestsRouted: routed.load(ordering: .relaxed), requestsWithoutRoute: unrouted.load(ordering: .relaxed),
            badRequests: malformed.load(ordering: .relaxed), shedExchanges: shed.load(ordering: .relaxed),
            tlsRefusals: tlsRefused.load(ordering: .relaxed), forbiddenRequests: forbidden.load(ordering: .relaxed),
            rateLimitedRequests: requestsOverRate.load(ordering: .relaxed),
            retriedRequests: retried.load(ordering: .relaxed), endpointEjections: ejections.load(ordering: .relaxed),
            bufferedBytes: buffers.heldBytes, bufferWaits: buffers.waitCount)
    }
}
