/// The head of an HTTP/1 message as far as telemetry needs it: the start
/// line, the headers that name, trace and frame the message.
public enum HTTPHead: Sendable, Equatable {
    /// A request head.
    case request(HTTPRequestHead)
    /// A response head.
    case response(HTTPResponseHead)

    /// How the message's body is delimited.
    public var framing: HTTPBodyFraming {
        switch self {
        case .request(let head): head.framing
        case .response(let head): head.framing
        }
    }
}

/// How an HTTP/1 message body is delimited (RFC 9112, section 6).
public enum HTTPBodyFraming: Sendable, Equatable {
    /// `Content-Length` bytes (0 for a request without either header).
    case length(Int)
    /// `Transfer-Encoding: chunked`, ending with a zero-size chunk.
    case chunked
    /// Until the connection closes (a response with neither header).
    case untilClose
}

/// A request's start line and the headers telemetry reads.
public struct HTTPRequestHead: Sendable, Equatable {
    /// The method, such as `GET`.
    public var method: String
    /// The request target, at most ``HTTPHeadParser/targetLimit`` characters.
    public var target: String
    /// The protocol version, such as `HTTP/1.1`.
    public var version: String
    /// The `Host` header.
    public var host: String?
    /// The W3C `traceparent` header.
    public var traceparent: String?
    /// How the body is delimited.
    public var framing: HTTPBodyFraming

    /// Creates a request head.
    public init(method: String, target: String, version: String = "HTTP/1.1", host: String? = nil, traceparent: String? = nil,
                framing: HTTPBodyFraming = .length(0)) {
        self.method = method
        self.target = target
        self.version = version
        self.host = host
        self.traceparent = traceparent
        self.framing = framing
    }

    /// The host of the `Host` header without its port (`[::1]:8080` gives `::1`).
    public var hostName: String? { host.flatMap(Self.hostName) }

    /// The method as a metric label: one of the standard methods, or `_OTHER`
    /// (as OpenTelemetry asks), so a client cannot create label values at will.
    public var methodLabel: String { Self.methodLabel(method) }

    /// A `Host` value's host without its port (`[::1]:8080` gives `::1`); nil when empty.
    package static func hostName(_ host: String) -> String? {
        guard !host.isEmpty else { return nil }
        if host.hasPrefix("[") { return host.dropFirst().split(separator: "]", maxSplits: 1).first.map(String.init) }
        return host.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)
    }

    /// `method` as a metric label: itself if standard, else `_OTHER`.
    package static func methodLabel(_ method: String) -> String {
        methodLabel(standardIndex: standardMethodIndex(method))
    }

    /// The label of the method at `index` in ``standardMethods``; `_OTHER` for nil.
    package static func methodLabel(standardIndex index: Int?) -> String {
        index.map { standardMethods[$0] } ?? "_OTHER"
    }

    /// The standard methods, the most common first.
    package static let standardMethods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"]

    /// Where `method` is in ``standardMethods``; nil if it is not standard.
    /// (A few comparisons of short strings: no hashing per request.)
    package static func standardMethodIndex(_ method: String) -> Int? {
        standardMethods.firstIndex(of: method)
    }

    /// The target's path, without the query.
    public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
}

/// A response's status line and the headers telemetry reads.
public struct HTTPResponseHead: Sendable, Equatable {
    /// The status code, 100 to 999.
    public var status: Int
    /// The protocol version, such as `HTTP/1.1`.
    public var version: String
    /// How the body is delimited (for a response that has one: see
    /// ``HTTPResponseHead/hasBody(forRequestMethod:)``).
    public var framing: HTTPBodyFraming

    /// Whether this is an interim response (1xx other than 101 Switching
    /// Protocols): the final response to the same request follows it.
    public var isInterim: Bool { Self.isInterimStatus(status) }

    /// Whether a body follows this head: never for 1xx, 204, 304, or an answer to HEAD.
    public func hasBody(forRequestMethod method: String?) -> Bool { Self.hasBody(status: status, requestMethod: method) }

    /// Whether `status` is an interim one (1xx other than 101): another response to the same request follows it.
    package static func isInterimStatus(_ status: Int) -> Bool { 100..<200 ~= status && status != 101 }

    /// Whether a response of `status` to a `method` request has a body (RFC 9112 section 6.3): never for 1xx, 204, 304, or an answer to HEAD.
    package static func hasBody(status: Int, requestMethod method: String?) -> Bool {
        !(100..<200 ~= status || status == 204 || status == 304 || method == "HEAD")
    }
}
