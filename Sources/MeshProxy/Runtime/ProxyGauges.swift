import CoreMetrics

/// The proxy's global gauges, beside the per-tenant metrics of
/// ``TenantStatistics``: `mesh_proxy_tenants` (tenants serving),
/// `mesh_proxy_exchanges_in_flight` and `mesh_proxy_exchanges_waiting` (all
/// tenants' exchanges held and queued, as ``ProxyCapacity`` counts them).
struct ProxyGauges: Sendable {
    private let tenants: Meter
    private let inFlight: Meter
    private let waiting: Meter

    init(factory: any MetricsFactory) {
        tenants = Meter(label: "mesh_proxy_tenants", dimensions: [], factory: factory)
        inFlight = Meter(label: "mesh_proxy_exchanges_in_flight", dimensions: [], factory: factory)
        waiting = Meter(label: "mesh_proxy_exchanges_waiting", dimensions: [], factory: factory)
    }

    /// The tenants serving now.
    func serving(_ count: Int) { tenants.set(count) }

    /// The exchanges held and waiting now.
    func exchanges(inFlight held: Int, waiting queued: Int) {
        inFlight.set(held)
        waiting.set(queued)
    }
}
