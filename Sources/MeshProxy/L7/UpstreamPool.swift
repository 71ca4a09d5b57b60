import MeshKernel
import NIOCore
import NIOPosix
import NIOSSL

/// A tenant's keep-alive connections to its clusters' endpoints, on the
/// tenant's event loop: a connection a request is done with waits, idle, for
/// the next request to the same cluster endpoint, up to the cluster's limit
/// and idle timeout. It also counts the tenant's requests in flight per
/// endpoint, for least-request balancing, and its failures in a row, for
/// outlier detection (``HTTPCluster/OutlierDetection``).
///
/// Every method runs on ``eventLoop``, where all of the tenant's connections
/// live: its state is reached only through ``loopState``, which checks that
/// (as a loop-bound box would, but without the exclusivity check that each
/// read of a box's value costs).
final class UpstreamPool: @unchecked Sendable {
    let eventLoop: any EventLoop
    private let state = State()

    /// The pool's state, on its event loop only.
    private var loopState: State {
        eventLoop.preconditionInEventLoop()
        return state
    }

    fileprivate struct Key: Hashable {
        let cluster: String
        let endpoint: Endpoint

        /// The endpoint's hash only: the cluster's name is compared, not
        /// hashed (hashing its bytes was half of a lookup's cost), and the
        /// clusters that share an endpoint are few.
        func hash(into hasher: inout Hasher) { hasher.combine(endpoint) }
    }

    /// The tenant's requests in flight to one endpoint (of any cluster).
    fileprivate final class Load {
        @exclusivity(unchecked) var inFlight = 0
    }

    /// One cluster endpoint: its idle connections, the most recently used
    /// last, and its endpoint's load. A reference, which each connection
    /// keeps: finishing a request looks nothing up, and leasing one changes
    /// no dictionary (a dictionary's in-place change costs allocations for
    /// its accessors' frames).
    ///
    /// Its state is `@exclusivity(unchecked)`, as ``State``'s is (and ``Load``'s).
    fileprivate final class Place {
        @exclusivity(unchecked) var connections: [UpstreamConnection] = []
        let load: Load
        /// Swept out of the pool (unused): a ``LastPlace`` still naming it looks the endpoint up again.
        @exclusivity(unchecked) var retired = false

        init(load: Load) { self.load = load }
    }

    /// A reference: reaching it copies nothing. Its state is
    /// `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
    private final class State {
        @exclusivity(unchecked) var places: [Key: Place] = [:]
        @exclusivity(unchecked) var loads: [Endpoint: Load] = [:]
        /// Failures in a row, and until when an endpoint is out, by cluster endpoint.
        @exclusivity(unchecked) var failures: [Key: Int] = [:]
        @exclusivity(unchecked) var ejectedUntil: [Key: NIODeadline] = [:]
        @exclusivity(unchecked) var closed = false
        /// How many places there may be before the unused ones are swept out (``sweepUnusedPlaces()``).
        @exclusivity(unchecked) var sweepAt = UpstreamPool.fewestPlacesSwept
    }

    /// The fewest places a sweep of the unused ones waits for.
    static let fewestPlacesSwept = 256

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Where a client connection's last request went in the pool, kept by
    /// the connection: its next request to the same cluster endpoint — the
    /// usual case — finds its idle connections without hashing a key.
    struct LastPlace {
        fileprivate let key: Key
        fileprivate let place: Place
    }

    /// An idle connection to `endpoint`, now carrying the response to a
    /// `method` request to `downstream`; nil when there is none (then ``lease``
    /// makes one). Without `keepAlive` (an HTTP/1.0 request, which asks the
    /// upstream to close after it) the connection is not kept afterwards.
    /// `last` is where the caller's last request went, and then this one.
    func leaseIdle(cluster name: String, endpoint: Endpoint, for method: String, keepAlive: Bool,
                   to downstream: NIOLoopBound<HTTPProxyHandler>, last: inout LastPlace?) -> UpstreamConnection? {
        let state = loopState
        let place: Place
        if let last, !last.place.retired, last.key.endpoint == endpoint, last.key.cluster == name {
            place = last.place
        } else {
            let key = Key(cluster: name, endpoint: endpoint)
            guard let found = state.places[key] else { return nil }
            place = found
            last = LastPlace(key: key, place: found)
        }
        while let connection = place.connections.popLast() {
            connection.idleTimer?.clear()
            guard connection.isActive else { continue }
            connection.followReadLimits()
            place.load.inFlight += 1
            connection.reused = true
            connection.handler.attach(downstream, method: method, keepAlive: keepAlive)
            return connection
        }
        return nil
    }

    /// A new connection to `endpoint` of the cluster `target` for one request (after
    /// ``leaseIdle(cluster:endpoint:for:keepAlive:to:last:)`` found none), whose responses go to
    /// `downstream`; what waits to be sent on it is held in `buffers`; `completion` runs on the event loop.
    func connect(_ target: RouteTargets.Cluster, endpoint: Endpoint, tls: NIOSSLContext?, connectTimeout: TimeAmount,
                 for method: String, keepAlive: Bool, writeBufferLimit: Int, buffers: TenantBuffers?, to downstream: NIOLoopBound<HTTPProxyHandler>,
                 completion: @escaping (Result<UpstreamConnection, any Error>) -> Void) {
        let name = target.name, cluster = target.settings
        let place = place(of: Key(cluster: name, endpoint: endpoint))   // (on the event loop: `place(of:)` checks)
        place.load.inFlight += 1
        if let loop = eventLoop as? SpliceLoop {
            return connect(on: loop, target, endpoint: endpoint, tls: tls, connectTimeout: connectTimeout, for: method, keepAlive: keepAlive,
                           writeBufferLimit: writeBufferLimit, buffers: buffers, to: downstream, place: place, completion: completion)
        }
        guard let bootstrap = ClientBootstrap(validatingGroup: eventLoop) else {
            // An event loop that cannot make connections (an embedded one, in tests).
            place.load.inFlight -= 1
            return completion(.failure(UpstreamPoolError.noConnectionsFromThisEventLoop))
        }
        let handler = HTTPUpstreamHandler(buffers: buffers)
        handler.attach(downstream, method: method, keepAlive: keepAlive)
        let boundHandler = NIOLoopBound(handler, eventLoop: eventLoop)
        // Decided once: a limit set while it connects applies at its next request (``UpstreamConnection/followReadLimits()``).
        let inSmallSteps = buffers?.readsInSmallSteps == true
        bootstrap
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(limit: writeBufferLimit))
            .channelInitializer { upstream in
                upstream.eventLoop.makeCompletedFuture {
                    if inSmallSteps { upstream.readInSmallSteps() }
                    if let tls {
                        try upstream.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: cluster.tls?.serverName))
                    }
                    try upstream.pipeline.syncOperations.addHandler(boundHandler.value)
                }
            }
            .connect(to: endpoint.socketAddress)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    let connection = self.made(handler, endpoint: endpoint, cluster: target, place: place)
                    connection.readLimits = (channel, buffers, inSmallSteps)
                    completion(.success(connection))
                case .failure(let error):
                    place.load.inFlight -= 1
                    completion(.failure(error))
                }
            }
    }

    /// ``connect(_:endpoint:tls:connectTimeout:for:keepAlive:writeBufferLimit:buffers:to:completion:)`` on a splice loop: a ``LoopSocket``.
    private func connect(on loop: SpliceLoop, _ target: RouteTargets.Cluster, endpoint: Endpoint, tls: NIOSSLContext?, connectTimeout: TimeAmount,
                         for method: String, keepAlive: Bool, writeBufferLimit: Int, buffers: TenantBuffers?, to downstream: NIOLoopBound<HTTPProxyHandler>, place: Place,
                         completion: @escaping (Result<UpstreamConnection, any Error>) -> Void) {
        guard tls == nil else {
            place.load.inFlight -= 1
            return completion(.failure(UpstreamPoolError.noTLSOnSpliceLoop))
        }
        LoopSocket.connect(to: endpoint.socketAddress, on: loop, timeout: connectTimeout, writeBufferLimit: writeBufferLimit, buffers: buffers) { result in
            switch result {
            case .success(let socket):
                let handler = HTTPUpstreamHandler(buffers: nil)   // (its transport is the socket, which holds its own)
                handler.attach(downstream, method: method, keepAlive: keepAlive)
                handler.attach(socket)
                let connection = self.made(handler, endpoint: endpoint, cluster: target, place: place)
                socket.start(handler)
                guard connection.isActive else {
                    // (Closed as it started: its registration failed.)
                    place.load.inFlight -= 1
                    return completion(.failure(ChannelError.ioOnClosedChannel))
                }
                completion(.success(connection))
            case .failure(let error):
                place.load.inFlight -= 1
                completion(.failure(error))
            }
        }
    }

    /// The pool's connection through `handler`, just connected.
    private func made(_ handler: HTTPUpstreamHandler, endpoint: Endpoint, cluster target: RouteTargets.Cluster, place: Place) -> UpstreamConnection {
        let connection = UpstreamConnection(handler: handler, endpoint: endpoint, clusterName: target.name, cluster: target.settings)
        connection.place = place
        // A connection that closes while idle leaves the pool.
        handler.whenClosed = { self.forget(connection) }
        return connection
    }

    /// The request is done with `connection`: it waits for the next one if
    /// `reusable` and there is room, else it is closed.
    func finish(_ connection: UpstreamConnection, reusable: Bool) {
        let state = loopState
        let place = connection.place ?? place(of: Key(cluster: connection.clusterName, endpoint: connection.endpoint))
        connection.place = place
        place.load.inFlight -= 1
        connection.handler.detach()
        guard reusable, !state.closed, connection.isActive,
              place.connections.count < connection.cluster.maxIdleConnectionsPerEndpoint else {
            connection.close()
            return
        }
        // Idle: read on, so a close by the upstream is seen at once.
        connection.readResponses(true)
        if connection.idleTimer == nil {
            let transport = connection.handler.transport
            connection.idleTimer = DeadlineTimer(eventLoop: eventLoop) { transport?.close() }
        }
        // A deadline that moves costs no scheduling per request.
        connection.idleTimer?.set(in: connection.idleTimeout)
        place.connections.append(connection)
    }

    /// The place of `key`, made (with its endpoint's load) the first time.
    private func place(of key: Key) -> Place {
        let state = loopState
        if let place = state.places[key] { return place }
        if state.places.count >= state.sweepAt { sweepUnusedPlaces() }
        let load = state.loads[key.endpoint] ?? Load()
        state.loads[key.endpoint] = load
        let place = Place(load: load)
        state.places[key] = place
        return place
    }

    /// Drops the places (and loads) of endpoints with no connection and no
    /// request in flight, and waits for twice as many places before the next
    /// sweep: the endpoints of an original-destination cluster are whatever
    /// its clients connect to, and the pool keeps only those in use.
    private func sweepUnusedPlaces() {
        let state = loopState
        for (key, place) in state.places where place.connections.isEmpty && place.load.inFlight == 0 {
            place.retired = true
            state.places[key] = nil
        }
        let used = Set(state.places.keys.map(\.endpoint))
        state.loads = state.loads.filter { used.contains($0.key) }
        state.sweepAt = max(Self.fewestPlacesSwept, 2 * state.places.count)
    }

    /// The cluster endpoints the pool keeps a place for now.
    var placeCount: Int { loopState.places.count }

    /// A request to the cluster endpoint got an answer: its failures in a row start over.
    func succeeded(cluster name: String, _ endpoint: Endpoint) {
        let state = loopState
        guard !state.failures.isEmpty else { return }   // (the usual case: no failures counted, no key to hash)
        state.failures[Key(cluster: name, endpoint: endpoint)] = nil
    }

    /// A request to the cluster endpoint failed (connect, or a break before any
    /// answer). True when this takes the endpoint out.
    func failed(cluster name: String, _ cluster: HTTPCluster, _ endpoint: Endpoint) -> Bool {
        guard let detection = cluster.outlierDetection else { return false }
        let key = Key(cluster: name, endpoint: endpoint), state = loopState
        let count = state.failures[key, default: 0] + 1
        guard count >= detection.consecutiveFailures else {
            state.failures[key] = count
            return false
        }
        state.failures[key] = nil
        state.ejectedUntil[key] = .now() + TimeAmount(detection.ejectionDuration)
        return true
    }

    /// The cluster's endpoints that are out now.
    func ejected(cluster name: String) -> Set<Endpoint> {
        let state = loopState
        guard !state.ejectedUntil.isEmpty else { return [] }
        let now = NIODeadline.now()
        state.ejectedUntil = state.ejectedUntil.filter { $0.value > now }   // the ones whose time is up are back
        return Set(state.ejectedUntil.keys.filter { $0.cluster == name }.map(\.endpoint))
    }

    /// The tenant's requests in flight to `endpoint`.
    func inFlight(_ endpoint: Endpoint) -> Int {
        loopState.loads[endpoint]?.inFlight ?? 0
    }

    /// Closes the idle connections and keeps no more (the tenant is going).
    func close() {
        let state = loopState
        state.closed = true
        let idle = state.places.values.flatMap(\.connections)
        for place in state.places.values { place.connections = [] }
        for connection in idle { connection.close() }
    }

    private func forget(_ connection: UpstreamConnection) {
        connection.idleTimer?.cancel()
        connection.idleTimer = nil   // its action holds the connection's transport
        connection.place?.connections.removeAll { $0 === connection }
    }
}

/// One connection to an upstream endpoint, leased to one request at a time.
///
/// Its changing state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class UpstreamConnection {
    /// Its end: what it reads, and its transport.
    let handler: HTTPUpstreamHandler
    let endpoint: Endpoint
    let clusterName: String
    /// The cluster's settings when the connection was made (its pooling limits).
    let cluster: HTTPCluster
    /// How long it may wait idle in the pool (the cluster's ``HTTPCluster/idleConnectionTimeout``).
    let idleTimeout: TimeAmount
    /// It served an earlier request (so a break before any response may be a stale keep-alive).
    @exclusivity(unchecked) var reused = false
    /// Closes the connection once it has been idle for the cluster's time.
    @exclusivity(unchecked) fileprivate var idleTimer: DeadlineTimer?
    /// Its cluster endpoint in the pool: where it waits idle, and whose load it adds to.
    @exclusivity(unchecked) fileprivate var place: UpstreamPool.Place?
    /// Reading paused because the client does not take the response fast enough.
    @exclusivity(unchecked) private var paused = false
    /// Where NIO reads it: its channel, its tenant's account, and whether it reads in small steps.
    @exclusivity(unchecked) fileprivate var readLimits: (channel: any Channel, buffers: TenantBuffers?, inSmallSteps: Bool)?

    /// Where NIO reads it, reads in small steps from the time its tenant does
    /// (``TenantBuffers/readsInSmallSteps``: a cap or a bandwidth set live
    /// after it was made), and never back in large ones; a splice loop reads
    /// in the tenant's steps at each read.
    fileprivate func followReadLimits() {
        guard let limits = readLimits, !limits.inSmallSteps, limits.buffers?.readsInSmallSteps == true else { return }
        readLimits?.inSmallSteps = true
        limits.channel.readInSmallSteps()
    }

    /// Reads the upstream on or pauses it (only a change touches the connection).
    func readResponses(_ on: Bool) {
        guard paused == on else { return }
        paused = !on
        handler.transport?.setReading(on)
    }

    /// Whether the connection is open.
    var isActive: Bool { handler.transport?.isActive ?? false }

    /// Whether it takes more of the request now.
    var isWritable: Bool { handler.transport?.isWritable ?? false }

    /// The bytes of the request written and not yet taken by its socket.
    var heldBytes: Int { handler.transport?.heldBytes ?? 0 }

    /// Closes the connection.
    func close() { handler.transport?.close() }

    init(handler: HTTPUpstreamHandler, endpoint: Endpoint, clusterName: String, cluster: HTTPCluster) {
        self.handler = handler
        self.endpoint = endpoint
        self.clusterName = clusterName
        self.cluster = cluster
        idleTimeout = TimeAmount(cluster.idleConnectionTimeout)
    }
}

/// Why the pool could not give a connection.
enum UpstreamPoolError: Error, CustomStringConvertible {
    case noConnectionsFromThisEventLoop
    /// TLS to upstreams is NIO-SSL's, on NIO's loops only.
    case noTLSOnSpliceLoop

    var description: String {
        switch self {
        case .noConnectionsFromThisEventLoop: "no upstream connections from this event loop"
        case .noTLSOnSpliceLoop: "no TLS to upstreams from a splice loop"
        }
    }
}
