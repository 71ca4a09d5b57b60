import Logging
import MeshKernel
import MeshTelemetry
import NIOCore
import NIOHTTP1
import NIOSSL

/// The L7 side of one client connection: each request is routed by host,
/// path and headers to a cluster, sent to the endpoint the cluster's
/// balancing picks over a pooled keep-alive connection (``UpstreamPool``),
/// and the response is relayed back; then the next request is read. A
/// request without a body and with an idempotent method is sent again, to
/// another endpoint where there is one, when its upstream connection breaks
/// before any of the response arrived (``HTTPCluster/retries``).
///
/// Only message heads are parsed (strictly, ``HTTPWireHead``); bodies are
/// forwarded as the bytes came, their ends found by their framing
/// (``HTTPWireBody``), and a head that needs no change is forwarded as it
/// came too. Requests are served one at a time: a pipelined request waits in
/// the input until the one before it is answered.
///
/// Answers of its own, each with a reason in the body: 400 for a malformed
/// request (including conflicting, empty or repeated `Content-Length`/`Transfer-Encoding`,
/// transfer codings other than chunked, a TRACE with a body, and other than
/// one `Host`), 400 too for a repeated header that routing or authorization
/// reads and for an ambiguous path under authorization, 431 for a
/// head larger than the tenant allows, 404 when no route matches, 502 when
/// the upstream cannot be reached or answers malformed, 504 when its response
/// does not begin in time, 408 when a request head begun does not end in time
/// (a connection that sends nothing for that time is closed quietly, and so
/// is one silent both ways for the tenant's idle timeout),
/// 403 when the tenant's authorization refuses the request, 503 with
/// `Retry-After` when the proxy is at capacity and the tenant's turn does not
/// come (``ProxyCapacity``), 429 with `Retry-After` when the tenant is over its
/// ``TenantLimits/requestsPerSecond``, 501 for CONNECT. After a malformed
/// request's 400, and after 408, 431 and 501, the connection is closed (once
/// the answer has gone), and so it is when an upstream breaks off
/// mid-response. A request asking for a protocol upgrade is answered as a
/// plain request, and its connection then closes.
///
/// Hop-by-hop headers — `Connection` and those it names (except the framing
/// headers and `Host`), `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`,
/// `Expect` — stay behind, and repeated framing headers are sent once.
/// `Expect: 100-continue` is answered by the proxy itself.
///
/// Each routed request holds one of the tenant's exchanges from the
/// scheduler while it is sent and answered; a request that has to wait for
/// one waits here, its body held (reading pauses beyond the tenant's
/// ``TenantLimits/maxBufferedBytes``). What it holds so, and what its
/// connections' outputs hold, counts in the tenant's buffered bytes: at the
/// tenant's cap (``TenantLimits/maxTotalBufferedBytes``) neither the client
/// nor the upstream's response is read until the tenant holds less.
///
/// Its per-connection state is `@exclusivity(unchecked)`. Only this handler
/// touches it, on its event loop, and never across a call that can lead back
/// into the handler: plain reads and assignments, or mutations of values
/// whose methods call nothing (buffers, framing, option sets). No two
/// accesses can overlap, so the runtime's check (about 60 user-space
/// instructions an access, some 3,000 a request here; BENCHMARKS.md,
/// fourteenth session) would never find anything. The same holds for the
/// state of the objects it drives on its loop: ``HTTPUpstreamHandler``,
/// ``UpstreamConnection``, ``SocketOutput``, ``ChannelTransport``, ``LoopSocket``, ``DeadlineTimer``,
/// ``IdleWatch``.
final class HTTPProxyHandler: ChannelInboundHandler, StreamTransportDelegate, GracefulClosing {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Where the proxy's own answers and rebuilt heads are made.
    private static let allocator = ByteBufferAllocator()

    private enum State {
        /// Reading a request head.
        case idle
        /// Connecting upstream; the request's head and its body so far wait here.
        case connecting(head: ByteBuffer, body: [ByteBuffer])
        case forwarding(upstream: UpstreamConnection)
        /// Answered (by the proxy, or early by the upstream); the rest of the request is dropped.
        case discarding
        /// The connection is closing or closed: nothing more is started.
        case closed
    }

    /// Why reading from the client is paused; it resumes when there is no reason left.
    private struct Pauses: OptionSet {
        let rawValue: UInt8
        /// The upstream cannot take more of the request body.
        static let upstreamFull = Pauses(rawValue: 1)
        /// The client does not read its responses fast enough.
        static let clientFull = Pauses(rawValue: 2)
        /// Too much input waits in memory (pipelined requests, a body before its upstream connected).
        static let heldInput = Pauses(rawValue: 4)
        /// The tenant is over its bandwidth (``TenantLimits/bytesPerSecond``): nothing is read until its debt is paid.
        static let bandwidth = Pauses(rawValue: 8)
        /// The tenant holds its cap of buffered bytes (``TenantLimits/maxTotalBufferedBytes``),
        /// and the request's way to its upstream holds some: the client is not read until either holds less.
        static let tenantBuffers = Pauses(rawValue: 16)
        /// The tenant's limits (a timer, or room made under the cap, lifts them).
        static let tenantLimits: Pauses = [.bandwidth, .tenantBuffers]
    }

    /// Where failures that end a connection or an attempt are told (debug), with the tenant.
    private let logger: Logger
    private let routing: HTTPRouting
    /// The clusters the routes lead to, with their turns.
    private let targets: RouteTargets
    private let pool: UpstreamPool
    private let connectTimeout: TimeAmount
    private let counters: TenantCounters
    private let scheduler: FairScheduler
    /// The tenant's account with the scheduler, kept: a request's exchange is
    /// acquired and released looking nothing up. (Taken when the connection is
    /// admitted, for its tenant as configured then; a tenant removed meanwhile
    /// leaves an idle account behind until the next change of configuration.)
    private let account: FairScheduler.Account
    private let tenant: String
    /// Client contexts for clusters reached over TLS, by cluster name.
    private let upstreamTLS: [String: NIOSSLContext]
    /// Who the client is, as far as the proxy knows (for authorization).
    private let sources: Set<SourceIdentity>
    /// Where the client's connection was going before the datapath redirected
    /// it (nil when it was not redirected): an original-destination cluster's endpoint.
    private let originalDestination: Endpoint?
    /// The tenant's request rate, shared by its connections; nil for no limit.
    private let requestRate: TokenBucket?
    /// The tenant's bandwidth (``TenantLimits/bytesPerSecond``), drawn on by what is read both ways.
    private let bandwidth: TokenBucket?
    /// Where answered requests are reported as MeshTelemetry exchanges; nil for nowhere.
    private let reporting: ExchangeReporting?
    /// The most request input held in memory, and the upstream connections'
    /// write buffer: the tenant's ``TenantLimits/maxBufferedBytes``.
    private let bufferLimit: Int
    /// The bytes the tenant's connections hold, against its cap.
    private let buffers: TenantBuffers

    /// The routing's head and response timeouts, converted once (not per request).
    private let headTimeout: TimeAmount
    private let responseTimeout: TimeAmount

    @exclusivity(unchecked) private var state = State.idle
    /// The current request's exchange from the scheduler.
    @exclusivity(unchecked) private var slot = Slot.none
    /// The client connection, while the handler is attached to it.
    @exclusivity(unchecked) private var client: (any StreamTransport)?
    /// Client bytes not yet handled: the rest of a head, of a body, or pipelined requests.
    @exclusivity(unchecked) private var inbound: ByteBuffer?
    /// How far the search for the end of the next head has looked.
    @exclusivity(unchecked) private var scanned = 0
    /// The current request's body still to come; nil once it is whole.
    @exclusivity(unchecked) private var body: HTTPWireBody?
    /// The current request has been read to its end: what comes next is a
    /// pipelined request, held until the current exchange is over.
    @exclusivity(unchecked) private var requestComplete = false
    @exclusivity(unchecked) private var keepAlive = true
    /// The proxy is draining: no request after the current one (``closeGracefully()``).
    @exclusivity(unchecked) private var draining = false
    /// An exchange has been finished on this connection (a drain may close it between requests).
    @exclusivity(unchecked) private var answeredAny = false
    /// The current request's HTTP minor version and method (for the response's framing and headers).
    @exclusivity(unchecked) private var clientMinorVersion = 1
    @exclusivity(unchecked) private var requestMethod = ""
    /// The current request's response has begun (its head went to the client).
    @exclusivity(unchecked) private var responseStarted = false
    /// The client half-closed: what it sent is answered, then the connection closes.
    @exclusivity(unchecked) private var inputClosed = false
    /// Closes the connection once it has been silent both ways for the tenant's idle timeout.
    private let idle: IdleWatch?
    /// A request head must arrive within the tenant's time (408 after that).
    @exclusivity(unchecked) private var headTimer: DeadlineTimer?
    /// The upstream's response must begin within the tenant's time once the request is sent whole (504 after that).
    @exclusivity(unchecked) private var responseTimer: DeadlineTimer?
    /// When reading held over the tenant's bandwidth may resume; made at the first hold.
    @exclusivity(unchecked) private var bandwidthTimer: DeadlineTimer?
    /// The wait for room under the tenant's cap, while the request or the response waits on it.
    @exclusivity(unchecked) private var roomWaiting = RoomWaiting()
    /// The request input held (``limitHeldInput(_:)``) as counted in ``buffers``.
    @exclusivity(unchecked) private var heldCounted = 0
    /// The upstream's response is not read: the tenant holds its cap, and so does the client's output.
    @exclusivity(unchecked) private var responseWaitsForTenant = false
    @exclusivity(unchecked) private var pauses: Pauses = []
    /// Bytes of the current request held while its upstream connects.
    @exclusivity(unchecked) private var pendingBytes = 0 {
        didSet { if pendingBytes == 0, oldValue > 0 { requestWayMayBeEmpty() } }
    }
    /// The input is being worked through (a nested call leaves it to the loop running).
    @exclusivity(unchecked) private var processing = false
    /// A nested call asked for another pass of the loop running.
    @exclusivity(unchecked) private var processAgain = false
    /// An upstream written to and not yet flushed: the send comes last, after
    /// the bookkeeping, so the upstream woken by it finds this thread about to wait.
    @exclusivity(unchecked) private var unflushed: UpstreamConnection?
    /// The request being answered, for the tenant's HTTP metrics and the exchange reporting.
    @exclusivity(unchecked) private var current: RequestTimeline?
    /// The upstream that answered it, once one has (kept here, not in ``current``: see ``RequestTimeline``).
    @exclusivity(unchecked) private var currentUpstream: Endpoint?
    /// The last request's head once answered, to parse the next one into
    /// (when nothing else holds it): its object, field list and bytes.
    @exclusivity(unchecked) private var spareHead: HTTPWireHead?
    @exclusivity(unchecked) private var currentStatus = 0
    /// A header that the current request's routing or authorization read and
    /// found repeated (the request is refused). A property, not a local
    /// variable that the lookup captures: a captured variable's reads were
    /// checked for exclusivity at run time.
    @exclusivity(unchecked) private var repeatedHeader: String?
    /// Where the last request went in the pool (its next one to there looks nothing up).
    @exclusivity(unchecked) private var lastPlace: UpstreamPool.LastPlace?
    /// The current request as sent upstream, where it goes, and what a resend needs.
    @exclusivity(unchecked) private var exchange: Exchange?
    /// The current request's key for consistent hashing, if its cluster hashes one.
    @exclusivity(unchecked) private var requestHashKey: String?
    /// How the scheduler hands this connection a grant, made once (not per request); it holds the handler until removed.
    private var grantDelivery: FairScheduler.Grant = { _ in }

    /// The current request's exchange. At most 56 bytes (the fields are in
    /// the order that packs them): an optional of a larger value is destroyed
    /// through its type's metadata, a run-time call each time the handler
    /// sets and clears it. (The request's method is ``requestMethod``; its
    /// hash key, ``requestHashKey``.)
    struct Exchange {
        /// The head as sent upstream.
        let head: ByteBuffer
        let hasBody: Bool
        let target: RouteTargets.Cluster
        var tried: Set<Endpoint> = []
        var retriesLeft: Int

        var cluster: HTTPCluster { target.settings }
    }

    /// The methods whose requests, without a body, are safe to send again.
    private static let replayableMethods: Set<String> = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]

    /// Whether the current request may be sent again: idempotent and without a body.
    private func isReplayable(_ exchange: Exchange) -> Bool {
        !exchange.hasBody && Self.replayableMethods.contains(requestMethod)
    }

    private enum Slot {
        case none
        /// Waiting for the scheduler, to send the exchange once granted (or answer 503 when `timer` fires).
        case waiting(FairScheduler.Ticket, timer: Scheduled<Void>?)
        case held
    }

    init(targets: RouteTargets, pool: UpstreamPool, connectTimeout: TimeAmount, counters: TenantCounters,
         scheduler: FairScheduler, tenant: String, upstreamTLS: [String: NIOSSLContext] = [:], sources: Set<SourceIdentity> = [],
         requestRate: TokenBucket? = nil, bandwidth: TokenBucket? = nil, bufferLimit: Int = TenantLimits().maxBufferedBytes,
         reporting: ExchangeReporting? = nil, idleTimeout: TimeAmount? = nil, originalDestination: Endpoint? = nil,
         logger: Logger = Logger(label: "mesh-proxy", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.logger = logger
        self.originalDestination = originalDestination
        idle = idleTimeout.map(IdleWatch.init(timeout:))
        routing = targets.routing
        self.targets = targets
        headTimeout = TimeAmount(routing.requestHeadTimeout)
        responseTimeout = TimeAmount(routing.responseTimeout)
        self.pool = pool
        self.connectTimeout = connectTimeout
        self.counters = counters
        self.scheduler = scheduler
        account = scheduler.account(for: tenant)
        self.tenant = tenant
        self.upstreamTLS = upstreamTLS
        self.sources = sources
        self.requestRate = requestRate
        self.bandwidth = bandwidth
        self.reporting = reporting
        self.bufferLimit = bufferLimit
        buffers = counters.buffers
    }

    /// Serves the client connection `client` (once, before its first bytes).
    func attach(_ client: any StreamTransport) {
        self.client = client
        let handler = NIOLoopBound(self, eventLoop: client.eventLoop)
        headTimer = DeadlineTimer(eventLoop: client.eventLoop) { handler.value.headTimedOut() }
        responseTimer = DeadlineTimer(eventLoop: client.eventLoop) { handler.value.responseTimedOut() }
        grantDelivery = { ticket in handler.eventLoop.execute { handler.value.granted(ticket) } }
        headTimer?.set(in: headTimeout)
        idle?.start(on: client.eventLoop) { handler.value.client?.close() }
    }

    /// Leaves the client connection (it has closed): timers stop, upstream work is given back.
    func transportDetached() {
        idle?.stop()
        headTimer?.cancel()
        responseTimer?.cancel()
        bandwidthTimer?.cancel()
        roomWaiting.end(in: buffers)
        // The timers' actions, the wait for room and the grant delivery hold this handler: let them go.
        headTimer = nil
        responseTimer = nil
        bandwidthTimer = nil
        dropInput()
        grantDelivery = { _ in }
        finishUpstreamWork()
        state = .closed
        client = nil
    }

    // MARK: - The client connection's events

    func transportRead(_ buffer: ByteBuffer) {
        if case .closed = state { return }
        guard let client else { return }
        idle?.noteActivity()
        charge(buffer.readableBytes, client)
        inbound.appendInput(buffer)
        process(client)
        inbound.letGo(of: buffer)
        if requestWaitsOnCap { holdRequest(client) }
    }

    /// (Responses go out as they are made: nothing waits for the end of a read.)
    func transportReadComplete() {}

    func transportFailed(_ error: any Error) {
        logger.debug("client connection failed", metadata: ["tenant": "\(tenant)", "error": "\(error)"])
        guard let client else { return }
        close(client)
    }

    func transportClosed() {
        finishUpstreamWork()
        state = .closed
        dropInput()
    }

    /// The client will send no more: what it sent is answered, then the connection closes.
    func transportInputClosed() {
        guard let client else { return }
        inputClosed = true
        process(client)
    }

    func transportOutputEmptied() { roomMayAllow() }

    func transportWritabilityChanged() {
        guard let client else { return }
        idle?.noteActivity()   // the client is taking (or not taking) what was written: a slow drain is not silence
        if client.isWritable {
            // The client can take more: so may the upstream's response be read again, and the client.
            if case .forwarding(let upstream) = state { readResponse(of: upstream, client) }
            resume(.clientFull, client)
        }
    }

    // MARK: - As a NIO channel's handler

    func handlerAdded(context: ChannelHandlerContext) { attach(ChannelTransport(context, buffers: buffers, delegate: self)) }

    func handlerRemoved(context: ChannelHandlerContext) { transportDetached() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { transportRead(unwrapInboundIn(data)) }

    func errorCaught(context: ChannelHandlerContext, error: Error) { transportFailed(error) }

    func channelInactive(context: ChannelHandlerContext) {
        transportClosed()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { transportInputClosed() }
        if event is ProxyDraining { return closeGracefully() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        transportWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Requests

    /// Works through the held input: the next head when idle, else the
    /// current request's body (sent on, held, or dropped, by state). A nested
    /// call (from an answer given meanwhile) leaves the work to the running loop.
    private func process(_ client: any StreamTransport) {
        guard !processing else {
            processAgain = true
            return
        }
        processing = true
        defer { processing = false }
        // A send can fail and close the upstream inside the flush, and what that
        // starts (a retry, the next request) asks for another pass: it gets one.
        repeat {
            processAgain = false
            processOnce(client)
            limitHeldInput(client)
            flushUpstream(client)
        } while processAgain || unflushed != nil
    }

    /// Sends what was written to the upstream; reading the client waits while the upstream cannot take more.
    private func flushUpstream(_ client: any StreamTransport) {
        guard let upstream = unflushed else { return }
        unflushed = nil
        upstream.handler.flush()
        // (Unless the flush failed and the exchange is over already.)
        if case .forwarding(let current) = state, current === upstream, !upstream.isWritable { pause(.upstreamFull, client) }
    }

    private func processOnce(_ client: any StreamTransport) {
        work: while true {
            switch state {
            case .closed:
                dropInput()
                break work
            case .idle:
                guard var buffer = inbound, buffer.readableBytes > 0 else {
                    if inputClosed { closeAfterWrites(client) }
                    break work
                }
                guard let length = HTTPWireHead.length(in: buffer, scanned: &scanned), length <= routing.maxHeadBytes else {
                    if buffer.readableBytes > routing.maxHeadBytes {
                        refuse(.requestHeaderFieldsTooLarge, "the request head is larger than \(routing.maxHeadBytes) bytes")
                    } else if inputClosed {
                        closeAfterWrites(client)   // half a request, and the client will send no more
                    }
                    break work
                }
                let bytes = buffer.readSlice(length: length)!
                inbound = buffer
                scanned = 0
                headTimer?.clear()
                do throws(HTTPWireError) {
                    start(try HTTPWireHead.request(bytes, reusing: &spareHead), client: client)
                } catch {
                    requestMethod = ""
                    refuse(.badRequest, "malformed request: \(error.reason)")
                }
            case .connecting, .forwarding, .discarding:
                guard var framing = body else { break work }   // the request is whole: its answer comes next
                guard var buffer = inbound, buffer.readableBytes > 0 else {
                    if inputClosed {
                        // The client will send no more, and its request is not whole: it can never be answered.
                        finishUpstreamWork()
                        closeAfterWrites(client)
                    }
                    break work
                }
                let count: Int, complete: Bool
                do throws(HTTPWireError) {
                    (count, complete) = try framing.advance(over: buffer)
                } catch {
                    refuse(.badRequest, "malformed request body: \(error.reason)")
                    break work
                }
                body = framing
                if count > 0 {
                    let bytes = buffer.readSlice(length: count)!
                    inbound = buffer
                    switch state {
                    case .connecting(let head, var held):
                        held.append(Self.allocator.buffer(buffer: bytes))   // (a copy: the read's buffer is only lent)
                        state = .connecting(head: head, body: held)
                        pendingBytes += count
                    case .forwarding(let upstream):
                        upstream.handler.write(bytes)
                        unflushed = upstream
                    default:
                        break   // discarding
                    }
                    current?.requestBodyBytes += count
                }
                guard complete else { break work }
                requestEnded(client)
            }
        }
    }

    /// The current request has been read whole.
    private func requestEnded(_ client: any StreamTransport) {
        body = nil
        requestComplete = true
        // (The phase times are for the exchange reporting only: no clock read without it.)
        if reporting != nil { current?.requestEnded = RequestTimeline.now() }
        switch state {
        case .forwarding:
            // Sent whole: the upstream's answer is due from now.
            responseTimer?.set(in: responseTimeout)
        case .discarding:
            finishExchange(client: client)
        default:
            break
        }
    }

    /// A request head arrived: answer it, or route it and send it on.
    private func start(_ head: HTTPWireHead, client: any StreamTransport) {
        current = RequestTimeline(head: head, timed: timesRequests)
        currentUpstream = nil
        responseStarted = false
        clientMinorVersion = head.minorVersion
        requestMethod = head.method
        keepAlive = !draining && head.keepsAlive(minorVersion: clientMinorVersion)
        requestComplete = false
        guard head.method != "CONNECT" else {
            refuse(.notImplemented, "CONNECT is not proxied")
            return
        }
        // The framing first: without it the end of the request is unknown.
        let framing: HTTPWireBody
        do throws(HTTPWireError) {
            framing = try HTTPWireBody.request(head)
        } catch {
            refuse(.badRequest, error.reason)
            return
        }
        if case .length(0) = framing { requestComplete = true } else { body = framing }
        // The request's answer is given in state discarding until the body is read (or at once when there is none).
        state = .discarding
        let hosts = head.count(.host)
        guard hosts == 1 || (hosts == 0 && clientMinorVersion == 0) else {
            refuse(.badRequest, hosts == 0 ? "an HTTP/1.1 request without Host" : "more than one Host")
            return
        }
        if let refillIn = requestRate?.takeOne(), refillIn > .zero {
            counters.record(.rateLimitedRequest)
            let seconds = max(1, Int((refillIn + .nanoseconds(999_999_999)).components.seconds))
            answer(.tooManyRequests, "tenant \(tenant) is over its request rate; the next request is admitted in \(refillIn)", close: false,
                   headers: [("retry-after", "\(seconds)")])
            return
        }
        // An upgrade request is answered as a plain one; the connection closes after it.
        if head.contains(.upgrade) { keepAlive = false }
        var target = head.target
        // A header that decides routing or authorization must have one value: an upstream could read another.
        repeatedHeader = nil
        // (Configured names are lowercase: the tenant's validation saw to it.)
        func header(_ name: String) -> String? {
            let (value, isRepeated) = head.soleValue(named: name)
            if isRepeated { repeatedHeader = name }
            return value
        }
        func refuseRepeated() -> Bool {
            guard let repeated = repeatedHeader else { return false }
            counters.record(.badRequest)
            answer(.badRequest, "header \(repeated) is repeated, and routing or authorization depends on it", close: false)
            return true
        }
        if let authorization = routing.authorization {
            // The path is matched, and sent on, in one canonical form, so the upstream reads what was authorized.
            guard let canonical = HTTPAuthorization.canonicalTarget(head.target) else {
                counters.record(.badRequest)
                answer(.badRequest, "ambiguous path \(head.target): dot segments, path parameters, fragments and encoded separators are refused", close: false)
                return
            }
            target = canonical
            let (action, rule) = authorization.decide(sources: sources, method: head.method, path: target, header: header)
            if refuseRepeated() { return }
            guard action == .allow else {
                counters.record(.forbidden)
                let who = sources.isEmpty ? "an unidentified source" : sources.map(\.description).sorted().joined(separator: ", ")
                answer(.forbidden, "\(who) may not \(head.method) \(target): \(authorization.reason(rule))", close: false)
                return
            }
        }
        // (The host is read only where a route names one.)
        let matched = routing.routeIndex(host: { head.value(.host) }, path: target, header: header)
        if refuseRepeated() { return }
        guard let index = matched, let cluster = targets[route: index] else {
            counters.record(.noRoute)
            answer(.notFound, "no route for host \(head.value(.host) ?? "-") path \(target)", close: false)
            return
        }
        if !requestComplete, clientMinorVersion == 1, head.hasToken(.expect, "100-continue") {
            // The client waits for leave to send its body: the proxy gives it (the upstream is not asked).
            client.write(Self.allocator.buffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n"))
            client.flush()
            // (A send that fails closes a NIO channel at once: nothing is started for it. On a splice loop the
            // failure is told at the socket's next read, which ends the request started meanwhile.)
            if case .closed = state { return }
        }
        let hashKey: String? = switch cluster.settings.balancing {
        case .consistentHash(.header(let name)): header(name)
        case .consistentHash(.sourceAddress): client.remoteAddress?.ipAddress
        case .roundRobin, .leastRequest: nil
        }
        if refuseRepeated() { return }
        let sent = Self.upstreamHead(head, target: target, framing: framing, allocator: Self.allocator)
        exchange = Exchange(head: sent, hasBody: !requestComplete, target: cluster, retriesLeft: cluster.settings.retries)
        requestHashKey = hashKey
        state = .connecting(head: sent, body: [])
        pendingBytes = 0
        switch scheduler.acquire(account, canWait: true, whenGranted: grantDelivery) {
        case .admitted:
            slot = .held
            send(client: client)
        case .queued(let ticket):
            let delay = scheduler.capacity?.maxQueueDelay ?? .seconds(1)
            let handler = NIOLoopBound(self, eventLoop: client.eventLoop)
            let timer = client.eventLoop.scheduleTask(in: TimeAmount(delay)) { handler.value.waitedTooLong() }
            slot = .waiting(ticket, timer: timer)
        case .shed:
            shed("the proxy is at capacity and tenant \(tenant) is over its share with \(scheduler.capacity?.maxQueuedPerTenant ?? 0) requests waiting")
        }
    }

    /// The request's head as sent upstream: the bytes as they came when
    /// nothing needs to change, else rebuilt without the hop-by-hop headers
    /// (and those `Connection` names, except the framing headers and `Host`),
    /// with the framing headers once each, and with `target`.
    static func upstreamHead(_ head: HTTPWireHead, target: String, framing: HTTPWireBody, allocator: ByteBufferAllocator) -> ByteBuffer {
        let dropped = head.hopByHop(requestHopByHop, keeping: requestKept)
        var lengths = 0, codings = 0, normalized = true, hopByHop = false
        // (A head with none of the framing and hop-by-hop names — the usual request — has no field to count or drop:
        // without a Connection field, `dropped` holds known names only.)
        if head.containsAny(of: requestFramingOrHopByHop) {
            for field in head.fields {
                switch field.known {
                case .contentLength:
                    lengths += 1
                    normalized = normalized && !head.withBytes(field.value) { $0.contains(UInt8(ascii: ",")) }
                case .transferEncoding:
                    codings += 1
                    normalized = normalized && head.value(of: field) == "chunked"
                default:
                    if !hopByHop, dropped.contains(field, of: head) { hopByHop = true }
                }
            }
        }
        // (Empty lines before the request line are left behind too.)
        let leadingLine = head.hasLeadingEmptyLines
        if target == head.target, !hopByHop, lengths <= 1, codings <= 1, normalized, !leadingLine, (codings == 1) == framing.isChunked {
            return head.bytes
        }
        let framingField: [(name: String, value: String)] = switch framing {
        case .chunked: [("transfer-encoding", "chunked")]
        case .length(let length) where lengths > 0: [("content-length", "\(length)")]
        default: []
        }
        return head.rebuilt(startLine: "\(head.method) \(target) \(head.version)",
                            keeping: { $0.known != .contentLength && $0.known != .transferEncoding && !dropped.contains($0, of: head) },
                            adding: framingField, allocator: allocator)
    }

    /// Headers of a request that concern one connection only.
    private static let requestHopByHop = HTTPWireField.Names(.connection, .keepAlive, .proxyConnection, .te, .upgrade, .expect)
    /// Headers a request's `Connection` may name that are sent on all the same (the proxy frames the request and names its host).
    private static let requestKept = HTTPWireField.Names(.host, .contentLength, .transferEncoding)
    /// The names of the request headers that frame it or concern one connection only.
    private static let requestFramingOrHopByHop = requestHopByHop.known.union(HTTPWireField.KnownNames(.contentLength, .transferEncoding))
    /// Headers of a response that concern one connection only.
    private static let responseHopByHop = HTTPWireField.Names(.connection, .keepAlive, .proxyConnection, .upgrade)
    /// Headers a response's `Connection` may name that are sent on all the same (they frame the response).
    private static let responseKept = HTTPWireField.Names(.contentLength, .transferEncoding)

    /// The request holds an exchange: on to its cluster.
    private func send(client: any StreamTransport) {
        guard let attempts = exchange?.cluster.attemptsPerRequest else { return }
        counters.record(.requestRouted)
        connect(attemptsLeft: attempts, client: client)
    }

    /// The scheduler granted the exchange a request waited for (`ticket`).
    private func granted(_ ticket: FairScheduler.Ticket) {
        // Given up meanwhile (the client left): the exchange was given back then.
        guard case .waiting(let waiting, let timer) = slot, waiting == ticket else { return }
        timer?.cancel()
        slot = .held
        guard case .connecting = state, let client else {
            finishUpstreamWork()
            return
        }
        send(client: client)
    }

    /// The request waited its tenant's longest for an exchange: 503.
    private func waitedTooLong() {
        guard case .waiting(let ticket, _) = slot else { return }
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
        // (A body held while connecting goes with the exchange; the count's going to 0 looks again at the way, else this does.)
        if pendingBytes > 0 { pendingBytes = 0 } else { requestWayMayBeEmpty() }
        if case .forwarding(let upstream) = state {
            let wasUnflushed = unflushed === upstream
            if wasUnflushed { unflushed = nil }
            // Detached from this handler: nothing it does from now on reaches this request
            // (nor its writability: reading the client no longer waits for it).
            pool.finish(upstream, reusable: reusable)
            state = .discarding
            if let client { resume(.upstreamFull, client) }
            // Nothing written stays behind in a connection kept (one being closed gets no more).
            if wasUnflushed, reusable { upstream.handler.flush() }
        }
        switch slot {
        case .none: break
        case .held: scheduler.release(account)
        case .waiting(let ticket, let timer):
            timer?.cancel()
            // Already granted, the grant on its way: the exchange is given back here, not by its
            // delivery (which is lost if this was a retired tenant's last connection and its loop ends).
            if !scheduler.cancel(ticket) { scheduler.release(account) }
        }
        slot = .none
    }

    /// Leases a connection to the endpoint the cluster picks; a refused or
    /// timed-out connect (nothing of the request sent yet, so safe for any
    /// method) moves on to another endpoint while attempts are left, then answers 502.
    private func connect(attemptsLeft: Int, client: any StreamTransport) {
        // (The exchange is read where it is, not copied: a copy of it is a dozen reference counts a request.)
        guard let target = exchange?.target else { return }
        guard let endpoint = pickEndpoint(of: target) else {
            if target.settings.toOriginalDestination {
                counters.record(.noOriginalDestination)
                answer(.badGateway, "cluster \(target.name) goes to the connection's original destination, and this connection has none (it was not redirected to the proxy)",
                       close: false)
            } else {
                answer(.badGateway, "cluster \(target.name) has no endpoint", close: false)
            }
            return
        }
        let method = requestMethod
        let name = target.name
        let downstream = NIOLoopBound(self, eventLoop: client.eventLoop)
        if let idle = pool.leaseIdle(cluster: name, endpoint: endpoint, for: method, keepAlive: clientMinorVersion == 1, to: downstream,
                                     last: &lastPlace) {
            connected(idle)
            return
        }
        exchange?.tried.insert(endpoint)
        pool.connect(target, endpoint: endpoint, tls: upstreamTLS[name], connectTimeout: connectTimeout, for: method,
                   keepAlive: clientMinorVersion == 1, writeBufferLimit: bufferLimit, buffers: buffers, to: downstream) { result in
            switch result {
            case .success(let upstream): self.connected(upstream)
            case .failure(let error):
                self.counters.record(.upstreamFailed)
                self.endpointFailed(endpoint, cluster: target.settings, named: name)
                guard case .connecting = self.state else { return }   // the client went away meanwhile
                if attemptsLeft > 1 {
                    self.logger.debug("upstream unreachable, trying another endpoint",
                                      metadata: ["tenant": "\(self.tenant)", "cluster": "\(name)", "endpoint": "\(endpoint)", "error": "\(error)"])
                    self.connect(attemptsLeft: attemptsLeft - 1, client: client)
                } else {
                    self.answer(.badGateway, "upstream \(endpoint) of cluster \(name) unreachable: \(error)", close: false)
                }
            }
        }
    }

    /// The endpoint of `target` for the current exchange: one not yet tried
    /// for it and not taken out by outlier detection; failing that, one not
    /// yet tried; failing that, any.
    /// (An original-destination cluster's is the connection's, tried again or not; nil without one.)
    private func pickEndpoint(of target: RouteTargets.Cluster) -> Endpoint? {
        if target.settings.toOriginalDestination { return originalDestination }
        guard let tried = exchange?.tried else { return nil }
        let key = requestHashKey
        func turn() -> Int { target.takeTurn() }
        let ejected = pool.ejected(cluster: target.name)
        if !ejected.isEmpty, let endpoint = target.settings.pick(excluding: tried.union(ejected), turn: turn, inFlight: pool.inFlight, key: key) {
            return endpoint
        }
        return target.settings.pick(excluding: tried, turn: turn, inFlight: pool.inFlight, key: key)
            ?? target.settings.pick(excluding: [], turn: turn, inFlight: pool.inFlight, key: key)
    }

    private func connected(_ upstream: UpstreamConnection) {
        guard case .connecting(let head, let body) = state else {
            // Nobody waits for it any more (the client went away, or was answered); unused, it can serve another request.
            pool.finish(upstream, reusable: true)
            return
        }
        state = .forwarding(upstream: upstream)
        upstream.handler.write(head)
        for bytes in body { upstream.handler.write(bytes) }
        unflushed = upstream
        // A request already read whole: its answer is due from now.
        if requestComplete { responseTimer?.set(in: responseTimeout) }
        // What was held for the upstream is on its way; the rest of the body, if any, is read as fast as the upstream takes it.
        pendingBytes = 0
        // (Within a pass over the input, its end sends; else this call does.)
        if let client { process(client) }
    }

    private func responseTimedOut() {
        guard case .forwarding(let upstream) = state else { return }
        // The upstream's answer not read because of the tenant's limits (its bandwidth, or its cap while the
        // client's output holds an earlier response's tail): the wait is the proxy's, not the upstream's.
        if pauses.contains(.bandwidth) || responseWaitsForTenant {
            responseTimer?.set(in: responseTimeout)
            return
        }
        counters.record(.upstreamFailed)
        endpointFailed(upstream.endpoint, cluster: upstream.cluster, named: upstream.clusterName)
        // Answering gives the connection back to the pool closed: the upstream may still answer on it.
        answer(.gatewayTimeout, "no response from the upstream within \(routing.responseTimeout)", close: !requestComplete)
    }

    /// Counts a failure of an endpoint for outlier detection.
    private func endpointFailed(_ endpoint: Endpoint, cluster: HTTPCluster, named name: String) {
        if pool.failed(cluster: name, cluster, endpoint) { counters.record(.endpointEjected) }
    }

    // MARK: - Flow control

    /// Reading pauses while too much request input waits in memory, and resumes when it is sent on.
    /// (A head being read is bounded by the tenant's head size instead.)
    private func limitHeldInput(_ client: any StreamTransport) {
        let held = (inbound?.readableBytes ?? 0) + pendingBytes
        if held != heldCounted {
            buffers.change(by: held - heldCounted)
            heldCounted = held
        }
        if case .idle = state {
            resume(.heldInput, client)
        } else if held > bufferLimit {
            pause(.heldInput, client)
        } else {
            resume(.heldInput, client)
        }
    }

    private func pause(_ reason: Pauses, _ client: any StreamTransport) {
        let wasReading = pauses.isEmpty
        pauses.insert(reason)
        if wasReading { client.setReading(false) }
    }

    private func resume(_ reason: Pauses, _ client: any StreamTransport) {
        guard pauses.remove(reason) != nil, pauses.isEmpty else { return }
        client.setReading(true)
    }

    /// A write to the client that it does not take yet: its reading waits (so its answers cannot pile up).
    private func noteClientWritability(_ client: any StreamTransport) {
        if !client.isWritable { pause(.clientFull, client) }
    }

    /// The upstream can take more of the request body.
    func upstreamWritable() {
        guard case .forwarding = state, let client else { return }
        resume(.upstreamFull, client)
    }

    // MARK: - Responses

    /// `count` response body bytes written to the client: counted, and, for a
    /// response faster than the client reads it, the upstream's reading
    /// stopped until the client catches up.
    private func forwardedResponseBody(_ count: Int, from upstream: UpstreamConnection, client: any StreamTransport) {
        current?.responseBodyBytes += count
        charge(count, client)
        readResponse(of: upstream, client)
    }

    /// The upstream's response is read while the client takes what is written
    /// to it, the tenant's bandwidth is not in debt and its cap of buffered
    /// bytes does not hold the response; it waits otherwise.
    private func readResponse(of upstream: UpstreamConnection, _ client: any StreamTransport) {
        upstream.readResponses(client.isWritable && !pauses.contains(.bandwidth) && !responseWaitsForTenant)
    }

    /// Draws `count` bytes from the tenant's bandwidth; over it, reading from
    /// the client (and the upstream's response) stops until the debt is paid.
    private func charge(_ count: Int, _ client: any StreamTransport) {
        guard let bandwidth, count > 0 else { return }
        let owed = bandwidth.take(count)
        guard owed > .zero else { return }
        if !pauses.contains(.bandwidth) { counters.throttledRead() }
        holdOverBandwidth(for: owed, client)
    }

    /// Whether the request's way to its upstream holds bytes: a body held
    /// while the upstream connects, or written and not taken by its socket.
    /// (Only what waits for a slow peer counts: a way that holds none reads
    /// on even at the tenant's cap, so stalled connections cannot starve one
    /// that moves, and a request head or pipelined request being read — which
    /// only more reading can move on — never waits on the cap.)
    private var requestHoldsBytes: Bool {
        if pendingBytes > 0 { return true }
        if case .forwarding(let upstream) = state { return upstream.heldBytes > 0 }
        return false
    }

    /// Whether the client's reading waits on the tenant's cap: the tenant holds
    /// its cap of buffered bytes, and the request's way holds some.
    private var requestWaitsOnCap: Bool { buffers.isFull && requestHoldsBytes }

    /// Whether the upstream's response waits on the tenant's cap: the tenant
    /// holds its cap of buffered bytes, and the client's output holds some.
    private func responseWaitsOnCap(_ client: any StreamTransport) -> Bool { buffers.isFull && client.heldBytes > 0 }

    /// The request waits on the tenant's cap (``requestWaitsOnCap``): the
    /// client is not read until there is room, or the request's way is empty.
    private func holdRequest(_ client: any StreamTransport) {
        guard !pauses.contains(.tenantBuffers) else { return }
        buffers.waited()
        pause(.tenantBuffers, client)
        waitForRoom(client)
    }

    /// The response waits on the tenant's cap (``responseWaitsOnCap(_:)``):
    /// the upstream's response is not read until there is room, or the client's output is empty.
    private func holdResponse(_ client: any StreamTransport) {
        guard !responseWaitsForTenant else { return }
        buffers.waited()
        responseWaitsForTenant = true
        waitForRoom(client)
    }

    /// Waits for room under the tenant's cap (unless already waiting): ``roomMayAllow()`` once there may be.
    private func waitForRoom(_ client: any StreamTransport) {
        roomWaiting.begin(in: buffers, for: self, on: client.eventLoop) { $0.roomMayAllow() }
    }

    /// The request's way to its upstream may hold nothing any more (its held
    /// body went on, or its upstream went): waiting on the cap for it, the
    /// limits are looked at again — on a later turn, out of whatever changed it.
    private func requestWayMayBeEmpty() {
        guard roomWaiting.isWaiting, let client else { return }
        let handler = NIOLoopBound(self, eventLoop: client.eventLoop)
        client.eventLoop.execute { handler.value.roomMayAllow() }
    }

    /// The tenant may have room under its cap, or the way the request or the
    /// response waits on may be empty: while waiting on the cap, the limits
    /// are looked at again.
    func roomMayAllow() {
        guard roomWaiting.end(in: buffers) else { return }
        if case .closed = state { return }   // (closing: nothing is read any more)
        limitsMayAllow()
    }

    /// Reading pauses over the tenant's bandwidth until the bandwidth timer (made at its first use) looks again, once `owed` has passed.
    private func holdOverBandwidth(for owed: Duration, _ client: any StreamTransport) {
        pause(.bandwidth, client)
        if bandwidthTimer == nil {
            let handler = NIOLoopBound(self, eventLoop: client.eventLoop)
            bandwidthTimer = DeadlineTimer(eventLoop: client.eventLoop) { handler.value.limitsMayAllow() }
        }
        bandwidthTimer?.set(in: TimeAmount(owed))
    }

    /// The tenant's limits may allow reading again: each that does lets go of
    /// its pause; the timer waits on for the bandwidth's debt not yet paid,
    /// and a wait for room for the tenant still at its cap with the
    /// connection still holding some.
    private func limitsMayAllow() {
        guard let client else { return }
        if pauses.contains(.bandwidth) {
            let owed = bandwidth?.take(0) ?? .zero
            if owed > .zero { bandwidthTimer?.set(in: TimeAmount(owed)) } else { resume(.bandwidth, client) }
        }
        var needsRoom = false
        if pauses.contains(.tenantBuffers) {
            if requestWaitsOnCap { needsRoom = true } else { resume(.tenantBuffers, client) }
        }
        if responseWaitsForTenant {
            if responseWaitsOnCap(client) { needsRoom = true } else { responseWaitsForTenant = false }
        }
        if needsRoom {
            waitForRoom(client)
        } else {
            // (Neither waits on the cap any more: a wait still registered would only be woken for nothing.)
            roomWaiting.end(in: buffers)
        }
        if case .forwarding(let upstream) = state { readResponse(of: upstream, client) }
    }

    /// The upstream's response, part by part.
    func relay(_ part: UpstreamResponsePart) {
        idle?.noteActivity()   // the upstream's response on its way to the client
        guard let client else {
            // The client is gone: the connection is not fit to keep (the rest of this response would follow).
            finishUpstreamWork()
            return
        }
        guard case .forwarding(let upstream) = state else { return }
        switch part {
        case .head(let head, let endsWithClose, let wire):
            if MeshTelemetry.HTTPResponseHead.isInterimStatus(head.status) {
                // 100 was the proxy's to give (or not asked for); other interim answers go to HTTP/1.1 clients.
                if head.status != 100, clientMinorVersion == 1 { client.write(wire) }
                return
            }
            responseTimer?.clear()
            responseStarted = true
            if reporting != nil { current?.responseStarted = RequestTimeline.now() }
            currentUpstream = upstream.endpoint
            pool.succeeded(cluster: upstream.clusterName, upstream.endpoint)
            currentStatus = head.status
            // A body that ends with the upstream's close ends the client's connection too.
            if endsWithClose { keepAlive = false }
            // The head as it came and the body bytes behind it in one write, unless the head must change.
            var body = wire
            body.moveReaderIndex(forwardBy: head.bytes.readableBytes)
            if let changed = clientHead(head, allocator: Self.allocator) {
                client.write(changed)
                if body.readableBytes > 0 { client.write(body) }
            } else {
                client.write(wire)
            }
            forwardedResponseBody(body.readableBytes, from: upstream, client: client)
        case .body(let bytes):
            client.write(bytes)
            forwardedResponseBody(bytes.readableBytes, from: upstream, client: client)
        case .end(let reusable):
            // The connection serves another request if the upstream keeps it and the whole request went out on it.
            let complete = requestComplete
            finishUpstreamWork(reusable: reusable && complete)
            recordAnswer()
            if complete {
                finishExchange(client: client)
            } else {
                // Answered before the request ended: the answer goes now; the rest of the request is read and dropped.
                client.flush()
                state = .discarding
                resume(.upstreamFull, client)
                process(client)
            }
            // The bookkeeping first, the send last, so the client woken by it finds this thread about to wait.
            client.flush()
            noteClientWritability(client)
        }
    }

    /// What the upstream sent in one read goes out to the client together.
    func flushResponse() {
        guard case .forwarding(let upstream) = state, let client else { return }
        client.flush()
        noteClientWritability(client)
        // (Once flushed: what the client's socket did not take is held, and counted, by now.)
        if responseWaitsOnCap(client) {
            holdResponse(client)
            readResponse(of: upstream, client)
        }
    }

    /// The response head rebuilt for the client when its hop-by-hop headers
    /// must go or the connection's fate must be said (`Connection: close`, or
    /// `keep-alive` to an HTTP/1.0 client); nil when it goes as it came.
    private func clientHead(_ head: HTTPWireHead, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let dropped = head.hopByHop(Self.responseHopByHop, keeping: Self.responseKept)
        let say: String? = !keepAlive ? "close" : clientMinorVersion == 0 ? "keep-alive" : nil
        // (Without a Connection field, only fields with the known hop-by-hop names can go.)
        let drops = head.containsAny(of: Self.responseHopByHop.known) && head.fields.contains { dropped.contains($0, of: head) }
        guard say != nil || drops else { return nil }
        return head.rebuilt(startLine: nil, keeping: { !dropped.contains($0, of: head) },
                            adding: say.map { [("connection", $0)] } ?? [], allocator: allocator)
    }

    /// The upstream closed or failed before its response ended: 502 if none of
    /// the response went out yet, else the client connection closes.
    func upstreamBrokeOff(_ error: (any Error)?) {
        guard case .forwarding(let upstream) = state, var exchange else { return }
        guard let client else {
            finishUpstreamWork()
            return
        }
        counters.record(.upstreamFailed)
        // A kept connection that the upstream had closed meanwhile says nothing about the endpoint's health.
        if !upstream.reused { endpointFailed(upstream.endpoint, cluster: upstream.cluster, named: upstream.clusterName) }
        // Nothing of the response yet, and safe to send again: another try, on another endpoint where there is one.
        if !responseStarted, requestComplete, isReplayable(exchange), exchange.retriesLeft > 0 {
            exchange.retriesLeft -= 1
            exchange.tried.insert(upstream.endpoint)
            self.exchange = exchange
            counters.record(.retried)
            responseTimer?.clear()
            pool.finish(upstream, reusable: false)
            resume(.upstreamFull, client)
            state = .connecting(head: exchange.head, body: [])
            requestWayMayBeEmpty()   // (what the broken connection held went with it)
            connect(attemptsLeft: exchange.cluster.attemptsPerRequest, client: client)
            return
        }
        guard responseStarted else {
            answer(.badGateway, "the upstream closed before responding" + (error.map { ": \($0)" } ?? ""), close: !requestComplete)
            return
        }
        logger.debug("upstream broke off a response already begun; closing the client", metadata: [
            "tenant": "\(tenant)", "endpoint": "\(upstream.endpoint)", "error": "\(error.map { "\($0)" } ?? "closed")"])
        finishUpstreamWork()
        close(client)   // part of a response may be out: the client must not take it for whole
    }

    /// Answers a request that cannot be read on, counted as bad, and closes.
    private func refuse(_ status: HTTPResponseStatus, _ reason: String) {
        counters.record(.badRequest)
        answer(status, reason, close: true)
    }

    /// Writes a response of the proxy's own; closes after it if asked or if the client wants no more.
    private func answer(_ status: HTTPResponseStatus, _ reason: String, close: Bool, headers extra: [(String, String)] = []) {
        guard let client else { return }
        // No upstream work is left for this request: its exchange goes back before the next request starts.
        finishUpstreamWork()
        guard !responseStarted else {
            // The upstream's response (or part of it) is out already: another head cannot
            // follow; the connection closes once what was written has gone.
            closeAfterWrites(client)
            return
        }
        let closing = close || !keepAlive
        let body = reason + "\n"
        var head = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n"
        for (name, value) in extra { head += "\(name): \(value)\r\n" }
        head += closing ? "connection: close\r\n\r\n" : "connection: keep-alive\r\n\r\n"
        // An answer to HEAD has no body.
        let withBody = requestMethod != "HEAD"
        var bytes = Self.allocator.buffer(capacity: head.utf8.count + (withBody ? body.utf8.count : 0))
        bytes.writeString(head)
        if withBody { bytes.writeString(body) }
        client.write(bytes)
        currentStatus = Int(status.code)
        current?.responseBodyBytes = withBody ? body.utf8.count : 0
        recordAnswer()
        if closing {
            // (Reading stops: what the client sends from now on is not read.)
            client.closeAfterWrites()
            state = .closed
            dropInput()
            return
        }
        client.flush()
        noteClientWritability(client)
        if requestComplete {
            // The whole request was read: done.
            finishExchange(client: client)
        } else {
            // The rest of the request, if any, is read and dropped.
            state = .discarding
            pendingBytes = 0
            resume(.upstreamFull, client)
            process(client)
        }
    }

    private func close(_ client: any StreamTransport) {
        finishUpstreamWork()
        state = .closed
        dropInput()
        client.close()
    }

    /// The held input goes (the connection is closing, or closed): no byte of it stays counted.
    /// (A body held while connecting went with the exchange: ``finishUpstreamWork(reusable:)``.)
    private func dropInput() {
        inbound = nil
        buffers.release(heldCounted)
        heldCounted = 0
    }

    /// Closes once what was written has gone out (a close at once would drop writes still queued).
    private func closeAfterWrites(_ client: any StreamTransport) {
        finishUpstreamWork()
        state = .closed
        dropInput()
        // Nothing more is read: a client that keeps sending cannot hold the connection open.
        client.closeAfterWrites()
    }

    /// Counts the answer to the current request in the tenant's HTTP metrics.
    /// Whether anything reads requests' times: exchange reporting, or per-tenant HTTP metrics.
    private var timesRequests: Bool { reporting != nil || counters.recordsHTTPRequests }

    private func recordAnswer() {
        defer {
            spareHead = current?.head
            current = nil
        }
        guard timesRequests else { return }   // no clock read for nobody
        let ended = RequestTimeline.now()
        if let reporting, let current { reporting.record(current, status: currentStatus, upstream: currentUpstream, ended: ended) }
        counters.httpAnswered(method: current?.head.method ?? "_OTHER", status: currentStatus,
                              duration: .nanoseconds(Int64(ended &- (current?.started ?? ended))))
    }

    /// The exchange is over: the next request is read, or (without keep-alive) the connection closes.
    private func finishExchange(client: any StreamTransport) {
        state = .idle
        answeredAny = true
        requestComplete = false
        responseStarted = false
        body = nil
        exchange = nil
        guard keepAlive else {
            closeAfterWrites(client)
            return
        }
        headTimer?.set(in: headTimeout)
        // Requests that arrived pipelined behind this one, in order.
        process(client)
    }

    /// The proxy is draining: a connection between requests, with no byte of
    /// the next one read, none unread in its socket and reading not paused,
    /// closes now — an idle keep-alive connection, or one opened and not used
    /// yet; any other has its current or next request answered with
    /// `Connection: close`, then closes (one that never sends closes at the
    /// head timeout). Where unread bytes cannot be told (TLS: the first
    /// request may be held by the handshake), a connection that has answered
    /// nothing yet waits for its first request: closing it could lose it.
    func closeGracefully() {
        draining = true
        keepAlive = false
        guard case .idle = state, pauses.isEmpty, let client, (inbound?.readableBytes ?? 0) == 0 else { return }
        let unread = client.hasUnreadInput
        guard unread == false || (unread == nil && answeredAny) else { return }
        closeAfterWrites(client)
    }

    /// No complete request head in the tenant's time: a slow client is answered
    /// 408 and closed; a connection with no byte of a next request is closed
    /// quietly (an unused keep-alive connection, not a bad request).
    private func headTimedOut() {
        guard case .idle = state, let client else { return }
        // Not read because of the tenant's limits: the wait is the proxy's, not the client's.
        guard pauses.isDisjoint(with: .tenantLimits) else {
            headTimer?.set(in: headTimeout)
            return
        }
        guard let waiting = inbound, waiting.readableBytes > 0 else {
            closeAfterWrites(client)
            return
        }
        requestMethod = ""
        refuse(.requestTimeout, "no complete request head within \(routing.requestHeadTimeout)")
    }
}
