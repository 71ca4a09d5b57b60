import MeshKernel

/// One HTTP request and its response, as one end of the connection saw them.
public struct HTTPExchange: Sendable, Equatable {
    /// Which end observed the exchange (as Hubble's `reporter` label).
    public enum Reporter: String, Sendable {
        /// The end that sent the request.
        case client
        /// The end that received it.
        case server
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
    /// The observing end's socket cookie.
    public var connection: UInt64

    /// From the start of the request to the end of the response.
    public var duration: Duration { .nanoseconds(Int64(responseEnd &- requestStart)) }
}
