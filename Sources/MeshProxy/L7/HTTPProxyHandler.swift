import MeshKernel
import NIOCore
import NIOHTTP1
import NIOSSL

/// The L7 side of one client connection: each request is routed by host,
/// path and headers to a cluster, sent to the endpoint the cluster's
/// balancing picks over a pooled keep-alive connection (``UpstreamPool``),
/// and the response is relayed back; then the next request is read (requests
/// are served one at a time: reading pauses while one is in flight). A
/// request without a body and with an idempotent method is sent again, to
/// another endpoint where there is one, when its upstream connection breaks
/// before any of the response arrived (``HTTPCluster/retries``).
///
/// Answers of its own, each with a reason in the body: 400 for a malformed
/// request (including conflicting `Content-Length`/`Transfer-Encoding`, which
/// the decoder refuses), 431 for a head larger than the tenant allows, 404 when
/// no route matches, 502 when the upstream cannot be reached, 504 when its
/// response does not begin in time, 408 when a request head does not arrive in
/// time, 403 when the tenant's authorization refuses the request, 503 with
/// `Retry-After` when the proxy is at capacity and the tenant's turn does not
/// come (``ProxyCapacity``), 429 with `Retry-After` when the tenant is over its
/// ``TenantLimits/requestsPerSecond``, 501 for CONNECT. After 400, 408, 431 and 501 the
/// connection is closed, and so it is when an upstream breaks off
/// mid-response. A request asking for a protocol upgrade is answered as a
/// plain request, and its connection then closes.
///
/// Framing is rebuilt for the upstream, never passed through: a request's
/// body is sent chunked if it came chunked (the only transfer coding
/// accepted) or with its one `Content-Length`, and hop-by-hop headers — those
/// named in `Connection` too, except the framing headers and `Host` — stay
/// behind. `Expect: 100-continue` is answered by the proxy itself.
///
/// Each routed request holds one of the tenant's exchanges from the
/// scheduler while it is sent and answered; a request that has to wait for
/// one waits here, with its connection's reading paused.
final class HTTPProxyHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// Connecting upstream; request parts wait here.
        case connecting(pending: [HTTPServerRequestPart])
        case forwarding(upstream: UpstreamConnection)
        /// Answered (by the proxy, or early by the upstream); the rest of the request is dropped.
        case discarding(keepAlive: Bool)
        /// The connection is closing or closed: nothing more is started.
        case closed
    }

    /// Why reading from the client is paused; it resumes when there is no reason left.
    private enum Pause: Hashable {
        /// The upstream cannot take more of the request body.
        case upstreamFull
        /// The client does not read its responses fast enough.
        case clientFull
        /// Too much input waits in memory (pipelined requests, a body before its upstream connected).
        case heldInput
        /// A malformed request waits behind the current one; the decoder can read no further.
        case malformedQueued
        /// The request asked for a protocol upgrade; the decoder reads no further and the connection closes after it.
        case upgrade
    }

    private let routing: HTTPRouting
    private let turns: ClusterTurns
    private let pool: UpstreamPool
    private let connectTimeout: TimeAmount
    private let counters: TenantCounters
    private let scheduler: FairScheduler
    private let tenant: String
    /// Client contexts for clusters reached over TLS, by cluster name.
    private let upstreamTLS: [String: NIOSSLContext]
    /// Who the client is, as far as the proxy knows (for authorization).
    private let sources: Set<SourceIdentity>
    /// The tenant's request rate, shared by its connections; nil for no limit.
    private let requestRate: TokenBucket?
    /// Where answered requests are reported as MeshTelemetry exchanges; nil for nowhere.
    private let reporting: ExchangeReporting?
    /// The current request's response has begun (its head went to the client).
    private var responseStarted = false
    private var state = State.idle
    /// The current request's exchange from the scheduler.
    private var slot = Slot.none
    private var context: ChannelHandlerContext?
    private var keepAlive = true
    /// The client half-closed: what it sent is answered, then the connection closes.
    private var inputClosed = false
    /// A request head must arrive within the tenant's time (408 after that).
    private var headTimer: DeadlineTimer?
    private var pauses = Set<Pause>()
    /// Bytes of request input held in memory: pipelined requests, and a body read before its upstream connected.
    private var queuedBytes = 0
    private var pendingBytes = 0
    /// The current request has been read to its end: what comes next is a
    /// pipelined request, held until the current exchange is over.
    private var requestComplete = false
    /// Input behind the current request: pipelined request parts, and a
    /// decoding error in them (answered in its turn, after the requests before it).
    private var queued: [QueuedInput] = []
    /// A request was refused as malformed: the connection is closing.
    private var refused = false
    /// The request being answered, for the tenant's HTTP metrics and the exchange reporting.
    private var current: RequestTimeline?
    private var currentStatus = 0
    /// The upstream's response must begin within the tenant's time once the request is sent whole (504 after that).
    private var responseTimer: DeadlineTimer?
    /// The current request as sent upstream, where it goes, and what a resend needs.
    private var exchange: Exchange?

    private enum QueuedInput {
        case part(HTTPServerRequestPart)
        case malformed(HTTPParserError)
    }

    private struct Exchange {
        let head: HTTPRequestHead
        let cluster: HTTPCluster
        let clusterName: String
        let hashKey: String?
        var tried: Set<Endpoint> = []
        var retriesLeft: Int
        var sawBody = false
        /// The upstream's response allows its connection to serve another request.
        var upstreamKeepAlive = false

        /// Idempotent and without a body: safe to send again.
        var isReplayable: Bool {
            !sawBody && ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(head.method.rawValue)
        }
    }

    private enum Slot {
        case none
        /// Waiting for the scheduler, to connect to `cluster` once granted (or answer 503 when `timer` fires).
        case waiting(FairScheduler.Ticket, cluster: HTTPCluster, name: String, timer: Scheduled<Void>?)
        case held
    }

    init(routing: HTTPRouting, turns: ClusterTurns, pool: UpstreamPool, connectTimeout: TimeAmount, counters: TenantCounters,
         scheduler: FairScheduler, tenant: String, upstreamTLS: [String: NIOSSLContext] = [:], sources: Set<SourceIdentity> = [],
         requestRate: TokenBucket? = nil, reporting: ExchangeReporting? = nil) {
        self.routing = routing
        self.turns = turns
        self.pool = pool
        self.connectTimeout = connectTimeout
        self.counters = counters
        self.scheduler = scheduler
        self.tenant = tenant
        self.upstreamTLS = upstreamTLS
        self.sources = sources
        self.requestRate = requestRate
        self.reporting = reporting
    }

    /// The server side's codec in front of this handler: the request decoder
    /// paired with the response encoder, so answers to HEAD carry no body.
    static func addServerCodec(to pipeline: ChannelPipeline.SynchronousOperations, maxHeadBytes: Int) throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = maxHeadBytes
        try pipeline.configureHTTPServerPipeline(position: .last, withPipeliningAssistance: false, withServerUpgrade: nil, withErrorHandling: false,
                                                 withOutboundHeaderValidation: true, withEncoderConfiguration: .init(),
                                                 withDecoderLimitConfiguration: limits)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        headTimer = DeadlineTimer(eventLoop: context.eventLoop) { handler.value.headTimedOut() }
        responseTimer = DeadlineTimer(eventLoop: context.eventLoop) { handler.value.responseTimedOut() }
        headTimer?.set(in: TimeAmount(saturating: routing.requestHeadTimeout))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        headTimer?.cancel()
        responseTimer?.cancel()
        // The timers' actions hold this handler: let both go.
        headTimer = nil
        responseTimer = nil
        finishUpstreamWork()
        state = .closed
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        handle(unwrapInboundIn(data), context: context)
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        if case .closed = state { return }
        if requestComplete {
            // Pipelined behind the current request: held until it is answered, reading paused if too much waits.
            queued.append(.part(part))
            queuedBytes += Self.size(of: part)
            limitHeldInput(context)
            return
        }
        if case .body(let body) = part { current?.requestBodyBytes += body.readableBytes }
        if case .end = part, !isIdle {
            requestComplete = true
            current?.requestEnded = RequestTimeline.now()
            // Sent whole (or about to be): the upstream's answer is due from now.
            if case .forwarding = state { responseTimer?.set(in: TimeAmount(saturating: routing.responseTimeout)) }
        }
        switch (state, part) {
        case (.idle, .head(let head)):
            headTimer?.clear()
            responseStarted = false
            keepAlive = head.isKeepAlive
            current = RequestTimeline(head: head)
            start(head, context: context)
        case (.connecting(var pending), _):
            if case .body = part { exchange?.sawBody = true }
            pending.append(part)
            state = .connecting(pending: pending)
            pendingBytes += Self.size(of: part)
            limitHeldInput(context)
        case (.forwarding(let upstream), _):
            if case .body = part { exchange?.sawBody = true }
            upstream.channel.writeAndFlush(HTTPClientRequestPart(part), promise: nil)
            // A request body faster than the upstream takes it: stop reading until it catches up.
            if !upstream.channel.isWritable { pause(.upstreamFull, context) }
        case (.discarding(let keep), .end):
            finishExchange(context: context, keepAlive: keep)
        case (.discarding, _), (.idle, _), (.closed, _):
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Bytes after a malformed request that waits its turn: the decoder refuses them; the answer comes in turn.
        if case ByteToMessageDecoderError.dataReceivedInErrorState = error, refused || pauses.contains(.malformedQueued) { return }
        guard let parserError = error as? HTTPParserError else {
            context.close(promise: nil)
            return
        }
        // The decoder goes on failing on what follows a bad request: answer and count it once.
        guard !refused, !pauses.contains(.malformedQueued) else { return }
        // Behind a request still being answered: its turn comes after that answer.
        if requestComplete {
            queued.append(.malformed(parserError))
            pause(.malformedQueued, context)
            return
        }
        refuse(parserError)
    }

    /// Answers a request the decoder refused, and closes.
    private func refuse(_ parserError: HTTPParserError) {
        refused = true
        counters.record(.badRequest)
        switch parserError {
        case .headerOverflow: answer(.requestHeaderFieldsTooLarge, "the request head is larger than \(routing.maxHeadBytes) bytes", close: true)
        default: answer(.badRequest, "malformed request: \(parserError)", close: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finishUpstreamWork()
        state = .closed
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client will send no more: what it sent is answered, then the connection closes.
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            if isIdle && queued.isEmpty { close(context) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            // The client can take more: the upstream may be read again, and so may the client.
            if case .forwarding(let upstream) = state { _ = upstream.channel.setOption(.autoRead, value: true) }
            resume(.clientFull, context)
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: One exchange

    private func start(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard head.method != .CONNECT else {
            counters.record(.badRequest)
            answer(.notImplemented, "CONNECT is not proxied", close: true)
            return
        }
        if case .empty(let refillIn)? = requestRate?.takeOne() {
            counters.record(.rateLimitedRequest)
            let seconds = max(1, Int((refillIn + .nanoseconds(999_999_999)).components.seconds))
            answer(.tooManyRequests, "tenant \(tenant) is over its request rate; the next request is admitted in \(refillIn)", close: false,
                   headers: [("retry-after", "\(seconds)")])
            return
        }
        if head.headers.contains(name: "upgrade") {
            // The decoder reads nothing after an upgrade request: answer this one as a plain request, then close.
            keepAlive = false
            pause(.upgrade, context)
        }
        var head = head
        if let authorization = routing.authorization {
            // The path is matched, and sent on, in one canonical form, so the upstream reads what was authorized.
            guard let canonical = HTTPAuthorization.canonicalTarget(head.uri) else {
                counters.record(.badRequest)
                answer(.badRequest, "ambiguous path \(head.uri): dot segments, path parameters, fragments and encoded separators are refused", close: false)
                return
            }
            head.uri = canonical
            let (action, reason) = authorization.decide(sources: sources, method: head.method.rawValue, path: head.uri) { head.headers.first(name: $0) }
            guard action == .allow else {
                counters.record(.forbidden)
                let who = sources.isEmpty ? "an unidentified source" : sources.map(\.description).sorted().joined(separator: ", ")
                answer(.forbidden, "\(who) may not \(head.method.rawValue) \(head.uri): \(reason)", close: false)
                return
            }
        }
        guard let route = routing.route(host: head.headers.first(name: "host"), path: head.uri, header: { head.headers.first(name: $0) }),
              let cluster = routing.clusters[route.cluster] else {
            counters.record(.noRoute)
            answer(.notFound, "no route for host \(head.headers.first(name: "host") ?? "-") path \(head.uri)", close: false)
            return
        }
        let sent: HTTPRequestHead
        switch Self.upstreamHead(head) {
        case .success(let framed): sent = framed
        case .failure(let refusal):
            counters.record(.badRequest)
            answer(.badRequest, refusal.reason, close: true)
            return
        }
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            // The client waits for leave to send its body: the proxy gives it (the upstream is not asked).
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        let hashKey: String? = switch cluster.balancing {
        case .consistentHash(.header(let name)): head.headers.first(name: name)
        case .consistentHash(.sourceAddress): context.channel.remoteAddress?.ipAddress
        case .roundRobin, .leastRequest: nil
        }
        exchange = Exchange(head: sent, cluster: cluster, clusterName: route.cluster, hashKey: hashKey, retriesLeft: cluster.retries)
        state = .connecting(pending: [.head(sent)])
        pendingBytes = 0
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let admission = scheduler.acquire(tenant, canWait: true) { ticket in
            handler.eventLoop.execute { handler.value.granted(ticket) }
        }
        switch admission {
        case .admitted:
            slot = .held
            send(to: cluster, named: route.cluster, context: context)
        case .queued(let ticket):
            let delay = scheduler.capacity?.maxQueueDelay ?? .seconds(1)
            let timer = context.eventLoop.scheduleTask(in: TimeAmount(saturating: delay)) { handler.value.waitedTooLong() }
            slot = .waiting(ticket, cluster: cluster, name: route.cluster, timer: timer)
        case .shed:
            shed("the proxy is at capacity and tenant \(tenant) is over its share with \(scheduler.capacity?.maxQueuedPerTenant ?? 0) requests waiting")
        }
    }

    /// The request holds an exchange: on to the cluster.
    private func send(to cluster: HTTPCluster, named name: String, context: ChannelHandlerContext) {
        counters.record(.requestRouted)
        connect(cluster, named: name, attemptsLeft: min(cluster.connectAttempts, cluster.endpoints.count), context: context)
    }

    /// The scheduler granted the exchange a request waited for (`ticket`).
    private func granted(_ ticket: FairScheduler.Ticket) {
        guard case .waiting(let waiting, let cluster, let name, let timer) = slot, waiting == ticket else {
            // Given up meanwhile (the client left, or the wait timed out as the grant came): give it back.
            scheduler.release(tenant)
            return
        }
        timer?.cancel()
        slot = .held
        guard case .connecting = state, let context else {
            finishUpstreamWork()
            return
        }
        send(to: cluster, named: name, context: context)
    }

    /// The request waited its tenant's longest for an exchange: 503.
    private func waitedTooLong() {
        guard case .waiting(let ticket, _, _, _) = slot else { return }
        // Granted at the same moment: the grant is on its way, and goes ahead.
        guard scheduler.cancel(ticket) else { return }
        slot = .none
        shed("the proxy is at capacity and no turn came for tenant \(tenant) within \(scheduler.capacity?.maxQueueDelay ?? .zero)")
    }

    /// Answers 503 with `Retry-After` for a request shed for want of capacity.
    private func shed(_ reason: String) {
        counters.record(.shed)
        let seconds = scheduler.capacity?.retryAfterSeconds ?? 1
        answer(.serviceUnavailable, reason, close: false, headers: [("retry-after", "\(seconds)")])
    }

    /// The current request needs the upstream no more: its response timer
    /// stops, its upstream connection goes back to the pool (kept if
    /// `reusable`, else closed), and its exchange goes back to the scheduler
    /// (or its place in the queue).
    private func finishUpstreamWork(reusable: Bool = false) {
        responseTimer?.clear()
        if case .forwarding(let upstream) = state {
            // Detached from this handler: nothing it does from now on reaches this request.
            pool.finish(upstream, reusable: reusable)
            state = .idle
        }
        switch slot {
        case .none: break
        case .held: scheduler.release(tenant)
        case .waiting(let ticket, _, _, let timer):
            timer?.cancel()
            // Already granted: the grant arrives to a handler with no slot, and releases it.
            _ = scheduler.cancel(ticket)
        }
        slot = .none
    }

    /// Leases a connection to the endpoint the cluster picks; a refused or
    /// timed-out connect (nothing of the request sent yet, so safe for any
    /// method) moves on to another endpoint while attempts are left, then answers 502.
    private func connect(_ cluster: HTTPCluster, named name: String, attemptsLeft: Int, context: ChannelHandlerContext) {
        guard var exchange else { return }
        let turn = { self.turns.take(name) }
        // Endpoints not yet tried for this request and not taken out by outlier detection; failing that, any.
        let ejected = pool.ejected(cluster: name)
        guard let endpoint = cluster.pick(excluding: exchange.tried.union(ejected), turn: turn, inFlight: pool.inFlight, key: exchange.hashKey)
                ?? cluster.pick(excluding: exchange.tried, turn: turn, inFlight: pool.inFlight, key: exchange.hashKey)
                ?? cluster.pick(excluding: [], turn: turn, inFlight: pool.inFlight, key: exchange.hashKey) else { return }
        exchange.tried.insert(endpoint)
        self.exchange = exchange
        let downstream = NIOLoopBound(self, eventLoop: context.eventLoop)
        pool.lease(cluster: name, cluster, endpoint: endpoint, tls: upstreamTLS[name], connectTimeout: connectTimeout, to: downstream) { result in
            switch result {
            case .success(let upstream): self.connected(upstream)
            case .failure(let error):
                self.counters.record(.upstreamFailed)
                self.endpointFailed(endpoint, cluster: cluster, named: name)
                guard case .connecting = self.state else { return }   // the client went away meanwhile
                if attemptsLeft > 1 {
                    self.connect(cluster, named: name, attemptsLeft: attemptsLeft - 1, context: context)
                } else {
                    self.answer(.badGateway, "upstream \(endpoint) of cluster \(name) unreachable: \(error)", close: false)
                }
            }
        }
    }

    /// Why a request's framing is not forwarded.
    struct FramingRefusal: Error {
        let reason: String
    }

    /// The request as sent upstream, with its framing rebuilt: hop-by-hop
    /// headers (and those `Connection` names, except the framing headers and
    /// `Host`) stay behind; a chunked body is sent chunked, any other with its
    /// one `Content-Length`. Transfer codings other than chunked are refused,
    /// and so is a TRACE with a body.
    static func upstreamHead(_ head: HTTPRequestHead) -> Result<HTTPRequestHead, FramingRefusal> {
        let codings = head.headers[canonicalForm: "transfer-encoding"].map { $0.lowercased() }
        let chunked = !codings.isEmpty
        guard codings.isEmpty || codings == ["chunked"] else {
            return .failure(FramingRefusal(reason: "transfer-encoding \(codings.joined(separator: ", ")) is not supported: only chunked"))
        }
        let length = head.headers.first(name: "content-length")
        guard head.method != .TRACE || (!chunked && (length == nil || length == "0")) else {
            return .failure(FramingRefusal(reason: "a TRACE request must not have a body"))
        }
        let protected: Set<String> = ["host", "content-length", "transfer-encoding"]
        var dropped: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect",
                                    "transfer-encoding", "content-length"]
        for token in head.headers[canonicalForm: "connection"] where !protected.contains(token.lowercased()) { dropped.insert(token.lowercased()) }
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 1)
        for (name, value) in head.headers where !dropped.contains(name.lowercased()) { headers.add(name: name, value: value) }
        if chunked {
            headers.add(name: "transfer-encoding", value: "chunked")
        } else if let length {
            headers.add(name: "content-length", value: length)
        }
        var framed = head
        framed.headers = headers
        return .success(framed)
    }

    private func connected(_ upstream: UpstreamConnection) {
        guard case .connecting(let pending) = state else {
            // Nobody waits for it any more (the client went away, or was answered); unused, it can serve another request.
            pool.finish(upstream, reusable: true)
            return
        }
        state = .forwarding(upstream: upstream)
        for part in pending { upstream.channel.write(HTTPClientRequestPart(part), promise: nil) }
        upstream.channel.flush()
        // A request already read whole: its answer is due from now.
        if requestComplete { responseTimer?.set(in: TimeAmount(saturating: routing.responseTimeout)) }
        // What was held for the upstream is on its way; the rest of the body, if any, is read as fast as the upstream takes it.
        pendingBytes = 0
        if let context { limitHeldInput(context) }
    }

    private func responseTimedOut() {
        guard case .forwarding(let upstream) = state else { return }
        counters.record(.upstreamFailed)
        endpointFailed(upstream.endpoint, cluster: upstream.cluster, named: upstream.clusterName)
        // Answering gives the connection back to the pool closed: the upstream may still answer on it.
        answer(.gatewayTimeout, "no response from the upstream within \(routing.responseTimeout)", close: !requestComplete)
    }

    /// Counts a failure of an endpoint for outlier detection.
    private func endpointFailed(_ endpoint: Endpoint, cluster: HTTPCluster, named name: String) {
        if pool.failed(cluster: name, cluster, endpoint) { counters.record(.endpointEjected) }
    }

    /// Roughly what a request part holds in memory.
    private static func size(of part: HTTPServerRequestPart) -> Int {
        switch part {
        case .head(let head): head.uri.utf8.count + head.headers.reduce(64) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        case .body(let buffer): buffer.readableBytes
        case .end: 0
        }
    }

    /// Reading pauses while too much request input waits in memory, and resumes when it is sent on.
    private func limitHeldInput(_ context: ChannelHandlerContext) {
        if queuedBytes + pendingBytes > 65_536 || queued.count > 64 {
            pause(.heldInput, context)
        } else {
            resume(.heldInput, context)
        }
    }

    private func pause(_ reason: Pause, _ context: ChannelHandlerContext) {
        let wasReading = pauses.isEmpty
        pauses.insert(reason)
        if wasReading { _ = context.channel.setOption(.autoRead, value: false) }
    }

    private func resume(_ reason: Pause, _ context: ChannelHandlerContext) {
        guard pauses.remove(reason) != nil, pauses.isEmpty else { return }
        _ = context.channel.setOption(.autoRead, value: true)
    }

    /// A write to the client that it does not take yet: its reading waits (so its answers cannot pile up).
    private func noteClientWritability(_ context: ChannelHandlerContext) {
        if !context.channel.isWritable { pause(.clientFull, context) }
    }

    /// The upstream can take more of the request body.
    func upstreamWritable() {
        guard case .forwarding = state, let context else { return }
        resume(.upstreamFull, context)
    }

    /// The upstream's response, part by part.
    func relay(_ part: HTTPClientResponsePart) {
        guard let context else {
            // The client is gone: the connection is not fit to keep (the rest of this response would follow).
            finishUpstreamWork()
            return
        }
        switch part {
        case .head(var head):
            responseTimer?.clear()
            responseStarted = true
            current?.responseStarted = RequestTimeline.now()
            if case .forwarding(let upstream) = state {
                pool.succeeded(cluster: upstream.clusterName, upstream.endpoint)
                current?.upstream = upstream.endpoint
            }
            exchange?.upstreamKeepAlive = head.isKeepAlive
            currentStatus = Int(head.status.code)
            for name in ["connection", "keep-alive", "proxy-connection", "upgrade"] { head.headers.remove(name: name) }
            head.headers.add(name: "connection", value: keepAlive ? "keep-alive" : "close")
            context.write(wrapOutboundOut(.head(head)), promise: nil)
        case .body(let body):
            current?.responseBodyBytes += body.readableBytes
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            // A response faster than the client reads it: stop reading the upstream until the client catches up.
            if !context.channel.isWritable, case .forwarding(let upstream) = state { _ = upstream.channel.setOption(.autoRead, value: false) }
        case .end(let trailers):
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
            noteClientWritability(context)
            // The connection serves another request if the upstream keeps it and the whole request went out on it.
            let complete = requestComplete
            finishUpstreamWork(reusable: (exchange?.upstreamKeepAlive ?? false) && complete)
            recordAnswer()
            if complete {
                finishExchange(context: context, keepAlive: keepAlive)
            } else {
                // Answered before the request ended: the rest of it is read and dropped.
                state = .discarding(keepAlive: keepAlive)
                resume(.upstreamFull, context)
            }
        }
    }

    /// The upstream closed or failed before its response ended: 502 if none of
    /// the response went out yet, else the client connection closes.
    func upstreamBrokeOff(_ error: (any Error)?) {
        guard case .forwarding(let upstream) = state, var exchange else { return }
        guard let context else {
            finishUpstreamWork()
            return
        }
        counters.record(.upstreamFailed)
        // A kept connection that the upstream had closed meanwhile says nothing about the endpoint's health.
        if !upstream.reused { endpointFailed(upstream.endpoint, cluster: upstream.cluster, named: upstream.clusterName) }
        // Nothing of the response yet, and safe to send again: another try, on another endpoint where there is one.
        if !responseStarted, requestComplete, exchange.isReplayable, exchange.retriesLeft > 0 {
            exchange.retriesLeft -= 1
            self.exchange = exchange
            counters.record(.retried)
            responseTimer?.clear()
            pool.finish(upstream, reusable: false)
            state = .connecting(pending: [.head(exchange.head), .end(nil)])
            connect(exchange.cluster, named: exchange.clusterName, attemptsLeft: min(exchange.cluster.connectAttempts, exchange.cluster.endpoints.count),
                    context: context)
            return
        }
        guard responseStarted else {
            answer(.badGateway, "the upstream closed before responding" + (error.map { ": \($0)" } ?? ""), close: !requestComplete)
            return
        }
        finishUpstreamWork()
        close(context)   // part of a response may be out: the client must not take it for whole
    }

    /// Writes a response of the proxy's own; closes after it if asked or if the client wants no more.
    private func answer(_ status: HTTPResponseStatus, _ reason: String, close: Bool, headers extra: [(String, String)] = []) {
        guard let context else { return }
        // No upstream work is left for this request: its exchange goes back before the next request starts.
        finishUpstreamWork()
        guard !responseStarted else {
            // Part of the upstream's response is out already: another head cannot follow; the connection closes.
            self.close(context)
            return
        }
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", "\(reason.utf8.count + 1)")] + extra)
        let closing = close || !keepAlive
        headers.add(name: "connection", value: closing ? "close" : "keep-alive")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        // (The encoder leaves the body out of an answer to HEAD.)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: reason + "\n")))), promise: nil)
        let sent = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        noteClientWritability(context)
        currentStatus = Int(status.code)
        if let head = current?.head { current?.responseBodyBytes = head.method == .HEAD ? 0 : reason.utf8.count + 1 }
        recordAnswer()
        if closing {
            let channel = context.channel
            sent.whenComplete { _ in channel.close(promise: nil) }
            state = .discarding(keepAlive: false)
        } else if requestComplete {
            // The whole request was already read (an upstream failure after it): done.
            finishExchange(context: context, keepAlive: true)
        } else {
            // The rest of the request, if any, is read and dropped.
            state = .discarding(keepAlive: true)
            pendingBytes = 0
            resume(.heldInput, context)
            resume(.upstreamFull, context)
        }
    }

    private var isIdle: Bool { if case .idle = state { true } else { false } }

    private func close(_ context: ChannelHandlerContext) {
        state = .closed
        context.close(promise: nil)
    }

    /// Counts the answer to the current request in the tenant's HTTP metrics.
    private func recordAnswer() {
        let ended = RequestTimeline.now()
        let method = current?.head.method.rawValue ?? "_OTHER"
        let duration = Duration.nanoseconds(Int64(ended &- (current?.started ?? ended)))
        if let reporting, let current { reporting.record(current, status: currentStatus, ended: ended) }
        counters.httpAnswered(method: method, status: currentStatus, duration: duration)
        current = nil
    }

    private func finishExchange(context: ChannelHandlerContext, keepAlive: Bool) {
        state = .idle
        requestComplete = false
        responseStarted = false
        guard keepAlive else {
            close(context)
            return
        }
        headTimer?.set(in: TimeAmount(saturating: routing.requestHeadTimeout))
        // Requests that arrived pipelined behind this one, in order.
        let waiting = queued
        queued = []
        queuedBytes = 0
        pauses.remove(.malformedQueued)
        replay: for input in waiting {
            switch input {
            case .part(let part): handle(part, context: context)
            case .malformed(let error) where requestComplete:
                queued.append(.malformed(error))   // still behind a request
                pauses.insert(.malformedQueued)
            case .malformed(let error):
                refuse(error)
                break replay   // the connection closes after this answer
            }
        }
        if case .closed = state { return }
        if inputClosed && isIdle && queued.isEmpty {
            close(context)
            return
        }
        if !refused { limitHeldInput(context) }
        if pauses.isEmpty { _ = context.channel.setOption(.autoRead, value: true) }
    }

    /// No complete request head in the tenant's time: a slow client is answered 408 and closed.
    private func headTimedOut() {
        guard case .idle = state, !refused else { return }
        refused = true
        counters.record(.badRequest)
        answer(.requestTimeout, "no complete request head within \(routing.requestHeadTimeout)", close: true)
    }
}

/// The upstream side of one request: hands the response back, part by part.
extension HTTPClientRequestPart {
    /// A server-side request part as the same part sent on as a client.
    init(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head): self = .head(head)
        case .body(let buffer): self = .body(.byteBuffer(buffer))
        case .end(let trailers): self = .end(trailers)
        }
    }
}
