import MeshKernel

/// One HTTP request and its response, as one end of the connection saw them.
public struct HTTPExchange: Sendable, Equatable {
    /// Which end observed the exchange (as Hubble's `reporter` label).
    public enum Reporter: String, Sendable {
        /// The end that sent the request.
        case client
        /// The end that received it.
        case server
        /// The per-node proxy the request went through (MeshProxy). It reports
        /// from the client's side: ``HTTPExchange/local`` is the address the client
        /// reached, ``HTTPExchange/remote`` the client, ``HTTPExchange/identity``
        /// the client's workload identity (0 when unknown), and
        /// ``HTTPExchange/upstream`` where the proxy sent the request; the byte
        /// counts are of the bodies (the proxy reads heads already parsed).
        case proxy

        /// Whether this end answered the request (a server, or the proxy in front of one).
        public var answers: Bool { self != .client }
    }

    /// Which end observed the exchange.
    public var reporter: Reporter
    /// The request head.
    public var request: HTTPRequestHead
    /// The response's status code.
    public var status: Int
    /// When the request's head was sent or received (ns, `CLOCK_MONOTONIC`).
    public var requestStart: UInt64
    /// When the request's last byte was sent or received.
    public var requestEnd: UInt64
    /// When the response's head was sent or received.
    public var responseStart: UInt64
    /// When the response's last byte was sent or received.
    public var responseEnd: UInt64
    /// Request bytes, head and body.
    public var requestBytes: Int
    /// Response bytes, head and body.
    public var responseBytes: Int
    /// The observing end's address.
    public var local: Endpoint
    /// The other end's address.
    public var remote: Endpoint
    /// The observing workload's identity.
    public var identity: UInt32
    /// The observing process.
    public var pid: UInt32
    /// The observing end's socket cookie (0 when not known).
    public var connection: UInt64
    /// Proxy-reported exchanges: the endpoint the proxy sent the request to;
    /// nil when the proxy answered it itself (403, 404, 429, 503…).
    public var upstream: Endpoint?
    /// Proxy-reported exchanges: the tenant whose listener the request came
    /// through; nil for the kernel's.
    public var tenant: String?

    /// Creates an exchange (the kernel's are assembled by ``HTTPExchangeAssembler``).
    public init(reporter: Reporter, request: HTTPRequestHead, status: Int, requestStart: UInt64, requestEnd: UInt64,
                responseStart: UInt64, responseEnd: UInt64, requestBytes: Int, responseBytes: Int, local: Endpoint, remote: Endpoint,
                identity: UInt32, pid: UInt32, connection: UInt64, upstream: Endpoint? = nil, tenant: String? = nil) {
        self.reporter = reporter
        self.request = request
        self.status = status
        self.requestStart = requestStart
        self.requestEnd = requestEnd
        self.responseStart = responseStart
        self.responseEnd = responseEnd
        self.requestBytes = requestBytes
        self.responseBytes = responseBytes
        self.local = local
        self.remote = remote
        self.identity = identity
        self.pid = pid
        self.connection = connection
        self.upstream = upstream
        self.tenant = tenant
    }

    /// From the start of the request to the end of the response.
    public var duration: Duration { .nanoseconds(Int64(responseEnd &- requestStart)) }
}
