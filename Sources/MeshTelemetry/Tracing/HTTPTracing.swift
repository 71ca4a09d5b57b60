import Glibc
import Tracing

/// Turns observed exchanges into spans: one span per exchange, from the
/// request's first byte to the response's last as the kernel timed them,
/// with OpenTelemetry's HTTP attributes. A request that carries a W3C
/// `traceparent` joins that trace (the tracer's propagation reads it); the
/// others start a trace of their own.
public struct HTTPTracing<T: Tracer>: Sendable {
    /// The tracer spans go to.
    public let tracer: T
    private let monotonicToEpoch: UInt64

    /// Spans through `tracer`.
    public init(tracer: T) {
        self.tracer = tracer
        monotonicToEpoch = Self.clockOffset()
    }

    /// Records one exchange as a span (client or server kind, as the end that saw it).
    public func record(_ exchange: HTTPExchange) {
        var context = InstrumentationContext.topLevel
        if let traceparent = exchange.request.traceparent {
            tracer.extract(["traceparent": traceparent], into: &context, using: HeaderExtractor())
        }
        let span = tracer.startSpan(
            exchange.request.methodLabel == "_OTHER" ? "HTTP" : exchange.request.method, context: context, ofKind: exchange.reporter.answers ? .server : .client,
            at: KernelInstant(nanosecondsSinceEpoch: exchange.requestStart &+ monotonicToEpoch))
        span.attributes["http.request.method"] = exchange.request.method
        span.attributes["http.response.status_code"] = exchange.status
        span.attributes["url.path"] = String(exchange.request.path)
        span.attributes["network.protocol.version"] = String(exchange.request.version.dropFirst("HTTP/".count))
        if let host = exchange.request.hostName { span.attributes["server.address"] = host }
        let (client, server) = exchange.reporter.answers ? (exchange.remote, exchange.local) : (exchange.local, exchange.remote)
        span.attributes["server.port"] = Int(server.port)
        span.attributes["client.address"] = client.address.description
        span.attributes["client.port"] = Int(client.port)
        // Head and body: OpenTelemetry's *.size (its *.body.size would be the body alone).
        span.attributes["http.request.size"] = exchange.requestBytes
        span.attributes["http.response.size"] = exchange.responseBytes
        if let tenant = exchange.tenant { span.attributes["mesh.tenant"] = tenant }
        // Server spans fail on 5xx, client spans on 4xx and 5xx (OpenTelemetry's HTTP conventions).
        if exchange.status >= 500 || (exchange.reporter == .client && exchange.status >= 400) {
            span.setStatus(SpanStatus(code: .error))
        }
        span.end(at: KernelInstant(nanosecondsSinceEpoch: exchange.responseEnd &+ monotonicToEpoch))
    }

    /// Wall-clock time minus monotonic time, to place kernel timestamps (CLOCK_MONOTONIC) in real time.
    private static func clockOffset() -> UInt64 {
        var real = timespec(), monotonic = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        clock_gettime(CLOCK_MONOTONIC, &monotonic)
        func nanoseconds(_ time: timespec) -> UInt64 { UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec) }
        return nanoseconds(real) &- nanoseconds(monotonic)
    }
}

/// A point in time taken from a kernel timestamp.
public struct KernelInstant: TracerInstant {
    /// Nanoseconds since the Unix epoch.
    public var nanosecondsSinceEpoch: UInt64
    /// Wraps a time.
    public init(nanosecondsSinceEpoch: UInt64) { self.nanosecondsSinceEpoch = nanosecondsSinceEpoch }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch }
}

/// Reads propagation headers from a dictionary of lowercased header names.
struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key.lowercased()] }
}
