import CoreMetrics
import MeshKernel
import Synchronization

/// Metrics of observed HTTP exchanges, recorded through swift-metrics into
/// whatever backend the application bootstrapped (or the `factory` given).
///
/// Three families of names, each optional:
/// - ``Naming/mesh``: `mesh_http_requests_total` and
///   `mesh_http_request_duration_seconds` by source and destination workload,
///   method, status and reporter (`client`, `server`, or `proxy` for MeshProxy's
///   exchanges, by the client's workload and the upstream's, and by `tenant`:
///   the proxy's tenant the request came through, a label only their series
///   have); `mesh_http_requests_in_flight`; `mesh_http_events_lost_total`.
/// - ``Naming/hubble``: Cilium Hubble's `hubble_http_requests_total{method,
///   protocol, status, reporter}` and `hubble_http_request_duration_seconds{method, reporter}`.
/// - ``Naming/openTelemetry``: the semantic conventions' `http.server.request.duration`
///   and `http.client.request.duration` as Prometheus names
///   (`http_server_request_duration_seconds`) with the attributes
///   `http.request.method`, `http.response.status_code`, `server.address` and
///   `network.protocol.version` as labels (dots become underscores).
///
/// Every label is bounded: the request path is never one (it is in traces
/// and the flow log), methods outside the standard ones are `_OTHER`, and a
/// server's `server_address` is its own address, not the client's `Host`.
public final class HTTPMetrics: Sendable {
    /// Which families of names to record.
    public struct Naming: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// `mesh_http_*`, by workload.
        public static let mesh = Naming(rawValue: 1)
        /// Cilium Hubble's names.
        public static let hubble = Naming(rawValue: 2)
        /// OpenTelemetry semantic-convention names and attributes.
        public static let openTelemetry = Naming(rawValue: 4)
    }

    /// Help text of every metric, by name (for exposition formats that need it, such as Prometheus).
    public static let help: [String: String] = [
        "mesh_http_requests_total": "HTTP requests observed in the kernel, by source and destination workload, method, status and reporting end.",
        "mesh_http_request_duration_seconds": "Time from a request's first byte to its response's last byte, as the reporting end's socket saw them.",
        "mesh_http_requests_in_flight": "HTTP requests sent or received whose response has not ended.",
        "mesh_http_events_lost_total": "Kernel events lost because the ring buffer was full; counts may be low by the requests they carried.",
        "hubble_http_requests_total": "HTTP requests, with Cilium Hubble's labels.",
        "hubble_http_request_duration_seconds": "HTTP request duration, with Cilium Hubble's labels.",
        "http_server_request_duration_seconds": "Duration of HTTP server requests (OpenTelemetry http.server.request.duration).",
        "http_client_request_duration_seconds": "Duration of HTTP client requests (OpenTelemetry http.client.request.duration).",
    ]

    private let naming: Naming
    private let factory: any MetricsFactory
    private let workloadName: @Sendable (UInt32) -> String
    private let peerWorkload: @Sendable (Endpoint) -> String?
    private let series = Mutex<[SeriesKey: Series]>([:])
    private let inFlight: Meter
    private let eventsLost: Counter
    private let lostSoFar = Mutex<UInt64>(0)

    /// Creates the metrics.
    ///
    /// - Parameters:
    ///   - naming: which families of names to record.
    ///   - factory: where to record; by default the one the application bootstrapped.
    ///   - workloadName: the name of a watched workload's identity.
    ///   - peerWorkload: the workload at a peer address, when known (else `unknown`).
    public init(naming: Naming = [.mesh, .hubble, .openTelemetry], factory: any MetricsFactory = MetricsSystem.factory,
                workloadName: @escaping @Sendable (UInt32) -> String = { "identity-\($0)" },
                peerWorkload: @escaping @Sendable (Endpoint) -> String? = { _ in nil }) {
        self.naming = naming
        self.factory = factory
        self.workloadName = workloadName
        self.peerWorkload = peerWorkload
        inFlight = Meter(label: "mesh_http_requests_in_flight", dimensions: [], factory: factory)
        eventsLost = Counter(label: "mesh_http_events_lost_total", dimensions: [], factory: factory)
    }

    /// What decides an exchange's labels: exchanges with equal keys update the same series.
    private struct SeriesKey: Hashable {
        var identity: UInt32
        var peer: String
        var method: String
        var status: Int
        var reporter: HTTPExchange.Reporter
        var version: String
        var server: Server
        /// The proxy's tenant (``HTTPExchange/tenant``), nil for exchanges the kernel observed.
        var tenant: String?
    }

    /// The `server_address` label, formatted only when its series is made.
    private enum Server: Hashable {
        /// An answering end's own address.
        case address(IPAddress)
        /// The host a client asked for.
        case host(String)

        var label: String {
            switch self {
            case .address(let address): address.description
            case .host(let host): host
            }
        }
    }

    /// The metrics one series key updates, created once.
    private struct Series {
        var counters: [Counter] = []
        var timers: [Timer] = []
    }

    /// Records one exchange.
    public func record(_ exchange: HTTPExchange) {
        // Bounded labels only: a standard method or _OTHER; for a server, its own
        // address (a client's Host header could be anything); for a client, the host it asked for.
        let server = exchange.reporter.answers ? Server.address(exchange.local.address)
            : exchange.request.hostName.map(Server.host) ?? .address(exchange.remote.address)
        // The proxy's peer is where it sent the request (else where the client meant to go).
        let peer = exchange.reporter == .proxy ? exchange.upstream ?? exchange.local : exchange.remote
        let key = SeriesKey(identity: exchange.identity, peer: peerWorkload(peer) ?? "unknown", method: exchange.request.methodLabel,
                            status: exchange.status, reporter: exchange.reporter, version: exchange.request.version, server: server,
                            tenant: exchange.tenant)
        let nanoseconds = Int64(clamping: exchange.responseEnd &- exchange.requestStart)
        let found = series.withLock { $0[key] }
        let metrics = found ?? makeSeries(key)
        for counter in metrics.counters { counter.increment() }
        for timer in metrics.timers { timer.recordNanoseconds(nanoseconds) }
    }

    private func makeSeries(_ key: SeriesKey) -> Series {
        var made = Series()
        let method = key.method, status = String(key.status), reporter = key.reporter.rawValue
        if naming.contains(.mesh) {
            let own = workloadName(key.identity), peer = key.peer
            // The proxy reports with the client's identity: it is the source, like a client's own.
            let (source, destination) = key.reporter == .server ? (peer, own) : (own, peer)
            let tenant = key.tenant.map { [("tenant", $0)] } ?? []
            made.counters.append(Counter(label: "mesh_http_requests_total", dimensions: [
                ("source_workload", source), ("destination_workload", destination),
                ("http_request_method", method), ("http_response_status_code", status), ("reporter", reporter)] + tenant, factory: factory))
            made.timers.append(Timer(label: "mesh_http_request_duration_seconds", dimensions: [
                ("source_workload", source), ("destination_workload", destination),
                ("http_request_method", method), ("reporter", reporter)] + tenant, factory: factory))
        }
        if naming.contains(.hubble) {
            made.counters.append(Counter(label: "hubble_http_requests_total", dimensions: [
                ("method", method), ("protocol", key.version), ("status", status), ("reporter", reporter)], factory: factory))
            made.timers.append(Timer(label: "hubble_http_request_duration_seconds", dimensions: [("method", method), ("reporter", reporter)],
                                     factory: factory))
        }
        if naming.contains(.openTelemetry) {
            let name = key.reporter.answers ? "http_server_request_duration_seconds" : "http_client_request_duration_seconds"
            made.timers.append(Timer(label: name, dimensions: [
                ("http_request_method", method), ("http_response_status_code", status), ("server_address", key.server.label),
                ("network_protocol_version", String(key.version.dropFirst("HTTP/".count)))], factory: factory))
        }
        // Bounded: past the limit, new label sets still record but are not kept.
        series.withLock { if $0.count < Self.seriesLimit { $0[key] = made } }
        return made
    }

    /// The most label sets kept ready; beyond it a series is looked up in the backend each time.
    private static let seriesLimit = 10_000

    /// Sets the number of requests waiting for their response.
    public func setInFlight(_ count: Int) { inFlight.set(count) }

    /// Brings the lost-events counter up to `total` (a running total, such as the kernel's).
    public func recordEventsLost(total: UInt64) {
        let delta = lostSoFar.withLock { seen -> UInt64 in
            defer { seen = max(seen, total) }
            return total > seen ? total - seen : 0
        }
        if delta > 0 { eventsLost.increment(by: Int64(clamping: delta)) }
    }
}
