#if canImport(Glibc)
import Glibc
#endif
import MeshKernel
import MeshTelemetry

/// One request as the proxy saw it go through: its head, its times
/// (`CLOCK_MONOTONIC` nanoseconds, the kernel's clock, so the proxy's exchanges
/// line up with those the kernel observes) and its body sizes.
///
/// At most 56 bytes: an optional of a larger value is destroyed through its
/// type's metadata, a run-time call each time the handler sets and clears
/// it; so where the request went (an `Endpoint?`, 24 bytes) is kept beside
/// it, in ``HTTPProxyHandler``.
struct RequestTimeline {
    let head: HTTPWireHead
    /// When its head was read (0 when nothing times requests).
    let started: UInt64
    /// When the request's last part arrived (0 until then, and when nothing reports exchanges).
    var requestEnded: UInt64 = 0
    /// When the response head went to the client (0 until then, and when nothing reports exchanges).
    var responseStarted: UInt64 = 0
    var requestBodyBytes = 0
    var responseBodyBytes = 0

    /// Starts the timeline of `head`; `timed`: whether anything will read its times.
    init(head: HTTPWireHead, timed: Bool) {
        self.head = head
        started = timed ? Self.now() : 0
    }

    /// `CLOCK_MONOTONIC` now, in nanoseconds.
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// Reports a client connection's answered requests to MeshTelemetry's
/// recorders (metrics, traces, flow log) as exchanges of reporter `proxy`, so
/// proxied traffic shows in the same series, by source and destination
/// workload, as the traffic the kernel observes.
struct ExchangeReporting: Sendable {
    /// Where exchanges are recorded.
    let recorders: [any HTTPExchangeRecorder]
    /// The tenant whose listener the client came through.
    let tenant: String
    /// Where the client meant to go: its original destination when the
    /// datapath redirected it, else the listener it came through.
    let destination: Endpoint
    /// The client's address.
    let client: Endpoint
    /// The client's workload identity from the datapath (0 when unknown).
    let sourceIdentity: UInt32

    /// This process (read once: `getpid` is a system call).
    private static let pid = UInt32(getpid())

    /// Records one answered request, answered by `upstream` (nil: by the proxy).
    func record(_ request: RequestTimeline, status: Int, upstream: Endpoint?, ended: UInt64) {
        let head = request.head
        let framing: HTTPBodyFraming = head.contains(.transferEncoding) ? .chunked : .length(request.requestBodyBytes)
        let telemetryHead = MeshTelemetry.HTTPRequestHead(method: head.method, target: head.target, version: head.version,
                                                          host: head.value(.host), traceparent: head.value(named: "traceparent"), framing: framing)
        // A request answered before it was read whole ends, for the record, with its answer.
        let requestEnded = request.requestEnded == 0 ? ended : request.requestEnded
        let exchange = HTTPExchange(
            reporter: .proxy, request: telemetryHead, status: status, requestStart: request.started, requestEnd: requestEnded,
            responseStart: request.responseStarted == 0 ? ended : request.responseStarted, responseEnd: ended,
            requestBytes: request.requestBodyBytes, responseBytes: request.responseBodyBytes, local: destination, remote: client,
            identity: sourceIdentity, pid: Self.pid, connection: 0, upstream: upstream, tenant: tenant)
        for recorder in recorders { recorder.record(exchange) }
    }
}
