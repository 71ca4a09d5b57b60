import MeshKernel

/// One tenant of the proxy: the listeners the datapath redirects its
/// workloads' connections to, where those connections go, and its limits.
public struct TenantConfiguration: Sendable, Equatable {
    /// How a tenant's connections are handled.
    public enum Mode: Sendable, Equatable {
        /// Layer 4: spliced to ``TenantConfiguration/upstream`` byte for byte.
        case tcp
        /// Layer 7: HTTP/1.1 requests routed to clusters (``TenantConfiguration/upstream`` is not used).
        case http(HTTPRouting)
    }

    /// Where a tenant's connections are forwarded.
    public enum Upstream: Sendable, Equatable {
        /// Where the workload meant to connect, recovered from the datapath.
        case originalDestination
        /// Always this endpoint.
        case fixed(Endpoint)
    }

    /// The tenant's name: 1 to 63 lowercase letters, digits and dashes.
    public var name: String
    /// The address and port the tenant's redirected connections arrive at.
    public var listener: Endpoint
    /// More addresses and ports of the tenant's (a port per kind of traffic the
    /// datapath redirects, say): served as ``listener`` is, under the same
    /// limits. A change of them binds the new ones and closes the ones gone;
    /// connections go on, whichever listener they came through.
    public var additionalListeners: [Endpoint]

    /// All the tenant's listeners: ``listener``, then ``additionalListeners``.
    public var listeners: [Endpoint] { [listener] + additionalListeners }

    /// The configuration field of the listener at `index` of ``listeners``, as errors name it.
    static func listenerField(at index: Int) -> String { index == 0 ? "listener" : "additionalListeners[\(index - 1)]" }
    /// Where its connections go (layer 4).
    public var upstream: Upstream
    /// Layer 4 or HTTP.
    public var mode: Mode
    /// Its resource limits.
    public var limits: TenantLimits
    /// Its share of the proxy's capacity relative to other tenants (1 to 10000),
    /// used when ``ProxyConfiguration/capacity`` is set.
    public var weight: Int
    /// How long a connection may stay silent in both directions before it is
    /// closed (it is closed within a quarter more: silence is checked four
    /// times per timeout, not timed per read). At least
    /// ``shortestIdleTimeout``, at most 7 days.
    public var idleTimeout: Duration

    /// The shortest ``idleTimeout``: a splice loop sweeps all its pairs (a
    /// shared group's loop, several tenants') every quarter of the shortest
    /// timeout among them, so one tenant's cannot make that more than 40 times a second.
    public static let shortestIdleTimeout = Duration.milliseconds(100)
    /// How long a connection to the upstream may take.
    public var connectTimeout: Duration
    /// TLS termination on the listener; nil for plain TCP.
    public var tls: TLSTermination?
    /// The datapath's number for this tenant, as its workloads are registered
    /// (``MeshKernel/ProxyRedirect/register(workload:tenant:identity:)``),
    /// when the proxy reads the datapath's records
    /// (``OriginalDestinationSource/datapath(_:)`` or
    /// ``OriginalDestinationSource/pinnedRecords(_:)``): a redirected connection
    /// whose record names another tenant is refused at accept and counted
    /// (``TenantStatistics/foreignTenantConnections``), so a redirect rule
    /// that sends one tenant's workloads to another's listener cannot put
    /// them under its routes, policies and limits. A connection whose record
    /// cannot be read is refused too (counted as without an original
    /// destination); one without a record — not redirected, or its record
    /// evicted from the datapath's table, which keeps the most recent — is
    /// served unchecked, without a workload identity. A proxy that reads no
    /// records (``OriginalDestinationSource/socketOption``) refuses a
    /// configuration with this set. Nil: not checked.
    public var datapathTenant: UInt32?

    /// Creates a tenant.
    public init(name: String, listener: Endpoint, upstream: Upstream = .originalDestination, mode: Mode = .tcp,
                limits: TenantLimits = TenantLimits(), weight: Int = 1, idleTimeout: Duration = .seconds(300),
                connectTimeout: Duration = .seconds(5), tls: TLSTermination? = nil, additionalListeners: [Endpoint] = [],
                datapathTenant: UInt32? = nil) {
        self.name = name
        self.listener = listener
        self.additionalListeners = additionalListeners
        self.upstream = upstream
        self.mode = mode
        self.limits = limits
        self.weight = weight
        self.idleTimeout = idleTimeout
        self.connectTimeout = connectTimeout
        self.tls = tls
        self.datapathTenant = datapathTenant
    }
}

/// What one tenant may use of the proxy, like a container's limits.
public struct TenantLimits: Sendable, Equatable {
    /// Connections open at once; more are refused (closed at accept). Nil: no limit.
    public var maxConnections: Int?
    /// New connections a second (bursts up to one second's worth); more are
    /// refused at accept. Nil: no limit.
    public var connectionsPerSecond: Int?
    /// Bytes a second across all the tenant's connections, both directions
    /// (bursts up to one second's worth): reading pauses while the tenant is
    /// over it, in reads of 16 KiB (as with a cap, below); in HTTP mode what a client sends and
    /// what is relayed to it draw on it, and over it the client and its
    /// upstream response are not read until the debt is paid. Where NIO reads
    /// (connections that terminate TLS here, and their upstreams), what a
    /// half-closed peer's socket still holds is read at once (NIO reads to the
    /// end of the stream), so the last socket buffer of such a connection can
    /// go faster: such a client's or upstream's receive buffer is kept at
    /// 48 KiB for it (which the kernel doubles). Nil: no limit.
    public var bytesPerSecond: Int?
    /// HTTP mode: requests a second across all the tenant's connections
    /// (bursts up to one second's worth); a request over it is answered
    /// 429 with `Retry-After` and never reaches a cluster. Nil: no limit.
    public var requestsPerSecond: Int?
    /// Bytes a connection may hold in the proxy per direction before it stops
    /// reading from the faster side (its buffered memory).
    public var maxBufferedBytes: Int
    /// Bytes all the tenant's connections may hold in the proxy together (the
    /// tenant's buffered memory, as a container's memory limit): at it, a
    /// connection that holds bytes waits before it reads until the slow sides
    /// have taken some of what is held. Reads then take 16 KiB at a time from
    /// a socket; a connection that holds nothing reads on (stalled neighbours
    /// cannot starve it) and keeps what it read, so the tenant can go over by
    /// at most a read per connection — and where NIO reads, by what a socket
    /// holds when its peer ends its stream, which NIO reads at once whatever
    /// the cap: those sockets' receive buffers are kept at 48 KiB (96 KiB once
    /// the kernel doubles it, a loopback segment and more) instead of growing
    /// with the kernel's tuning, which also keeps each such connection to
    /// about that much a round trip (roughly 5 MB/s a connection at a 10 ms
    /// round trip).
    /// Waits are counted (``TenantStatistics/bufferWaits``).
    /// Set or changed live, the cap applies at once. Its read size (as a
    /// bandwidth's) applies to HTTP connections on a splice loop at their
    /// next read, and to pooled upstream connections NIO reads at their next
    /// request (which keep small reads once they have them); L4 splices and
    /// client connections NIO reads keep the read size and receive buffer they began with. Not counted: a response head being
    /// read from an upstream (bounded by its head size), what a client sends
    /// before its connection is spliced or its TLS handshake ends, and NIO-SSL's own buffers.
    /// Nil: no cap beyond ``maxBufferedBytes`` per connection and direction.
    public var maxTotalBufferedBytes: Int?

    /// Creates limits.
    public init(maxConnections: Int? = nil, connectionsPerSecond: Int? = nil, bytesPerSecond: Int? = nil,
                requestsPerSecond: Int? = nil, maxBufferedBytes: Int = 256 * 1024, maxTotalBufferedBytes: Int? = nil) {
        self.maxConnections = maxConnections
        self.connectionsPerSecond = connectionsPerSecond
        self.bytesPerSecond = bytesPerSecond
        self.requestsPerSecond = requestsPerSecond
        self.maxBufferedBytes = maxBufferedBytes
        self.maxTotalBufferedBytes = maxTotalBufferedBytes
    }
}
