import CoreMetrics
import MeshKernel
import Synchronization

/// Metrics of observed HTTP exchanges, recorded through swift-metrics into
/// whatever backend the application bootstrapped (or the `factory` given).
///
/// Three families of names, each optional:
/// - ``Naming/mesh``: `mesh_http_requests_total` and
///   `mesh_http_request_duration_seconds` by source and destination workload,
///   method, status and reporter; `mesh_http_requests_in_flight`;
///   `mesh_http_events_lost_total`.
/// - ``Naming/hubble``: Cilium Hubble's `hubble_http_requests_total{method,
///   protocol, status, reporter}` and `hubble_http_request_duration_seconds{method, reporter}`.
/// - ``Naming/openTelemetry``: the semantic conventions' `http.server.request.duration`
///   and `http.client.request.duration` as Prometheus names
///   (`http_server_request_duration_seconds`) with the attributes
///   `http.request.method`, `http.response.status_code`, `server.address` and
///   `network.protocol.version` as labels (dots become underscores).
///
/// The request path is never a label (unbounded cardinality); it is in traces and the flow log.
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
    private let counters = Mutex<[String: Counter]>([:])
    private let timers = Mutex<[String: Timer]>([:])
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

    /// Records one exchange.
    public func record(_ exchange: HTTPExchange) {
        let method = exchange.request.method
        let status = String(exchange.status)
        let reporter = exchange.reporter.rawValue
        let nanoseconds = Int64(clamping: exchange.responseEnd &- exchange.requestStart)
        if naming.contains(.mesh) {
            let own = workloadName(exchange.identity), peer = peerWorkload(exchange.remote) ?? "unknown"
            let (source, destination) = exchange.reporter == .client ? (own, peer) : (peer, own)
            counter("mesh_http_requests_total", [("source_workload", source), ("destination_workload", destination),
                                                 ("http_request_method", method), ("http_response_status_code", status), ("reporter", reporter)])
                .increment()
            timer("mesh_http_request_duration_seconds", [("source_workload", source), ("destination_workload", destination),
                                                         ("http_request_method", method), ("reporter", reporter)])
                .recordNanoseconds(nanoseconds)
        }
        if naming.contains(.hubble) {
            counter("hubble_http_requests_total", [("method", method), ("protocol", exchange.request.version), ("status", status), ("reporter", reporter)])
                .increment()
            timer("hubble_http_request_duration_seconds", [("method", method), ("reporter", reporter)]).recordNanoseconds(nanoseconds)
        }
        if naming.contains(.openTelemetry) {
            let name = exchange.reporter == .server ? "http_server_request_duration_seconds" : "http_client_request_duration_seconds"
            let server = exchange.request.host.map { $0.split(separator: ":").first.map(String.init) ?? $0 }
                ?? (exchange.reporter == .server ? exchange.local : exchange.remote).address.description
            timer(name, [("http_request_method", method), ("http_response_status_code", status), ("server_address", server),
                         ("network_protocol_version", String(exchange.request.version.dropFirst("HTTP/".count)))])
                .recordNanoseconds(nanoseconds)
        }
    }

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

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        let key = Self.key(label, dimensions)
        return counters.withLock { cache in
            if let existing = cache[key] { return existing }
            let created = Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = created
            return created
        }
    }

    private func timer(_ label: String, _ dimensions: [(String, String)]) -> Timer {
        let key = Self.key(label, dimensions)
        return timers.withLock { cache in
            if let existing = cache[key] { return existing }
            let created = Timer(label: label, dimensions: dimensions, factory: factory)
            cache[key] = created
            return created
        }
    }

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        dimensions.reduce(into: label) { $0 += "\u{0}\($1.0)=\($1.1)" }
    }
}
