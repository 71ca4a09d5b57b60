import NIOCore
import NIOHTTP1
import NIOPosix
import MeshTestSupport
import Synchronization

/// The event loops of the tests' HTTP peers, apart from the proxy's (the
/// singleton group), as separate processes would be.
let peerGroup = MultiThreadedEventLoopGroup(numberOfThreads: 2)

/// An HTTP/1.1 upstream on 127.0.0.1 that answers every request with its
/// name after a fixed service time (a timer, not a busy CPU), keep-alive: a
/// backend whose capacity is its concurrency. It counts the connections it
/// accepted. It runs on `group` (the peers' loops unless told).
final class DelayedHTTPServer: Sendable {
    private let channel: any Channel
    private let accepted = Tally()
    private let seen = Requests()

    /// Connections accepted so far.
    var connectionsAccepted: Int { accepted.value }
    /// Every request it got, as method and path, in order.
    var requests: [String] { seen.all }

    private final class Requests: Sendable {
        private let list = Mutex<[String]>([])
        func append(_ request: String) { list.withLock { $0.append(request) } }
        var all: [String] { list.withLock { $0 } }
    }

    init(port: Int, serviceTime: TimeAmount, name: String = "ok", group: any EventLoopGroup = peerGroup) async throws {
        let accepted = self.accepted, seen = self.seen
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1_024)
            .childChannelInitializer { channel in
                accepted.add()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Answer(serviceTime: serviceTime, name: name, seen: seen))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
    }

    func stop() async { try? await channel.close() }

    private final class Answer: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let serviceTime: TimeAmount
        let name: String
        let seen: Requests

        init(serviceTime: TimeAmount, name: String, seen: Requests) {
            self.serviceTime = serviceTime
            self.name = name
            self.seen = seen
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let head) = unwrapInboundIn(data) { seen.append("\(head.method.rawValue) \(head.uri)") }
            guard case .end = unwrapInboundIn(data) else { return }
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let name = self.name
            context.eventLoop.scheduleTask(in: serviceTime) {
                let context = bound.value
                let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "\(name.utf8.count)"])
                context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(context.channel.allocator.buffer(string: name)))), promise: nil)
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
            }
        }
    }
}

/// What a load run saw: each answered request's latency and status, and the
/// `Retry-After` values of its 503s.
struct LoadResult: Sendable {
    var latencies: [Duration] = []
    var statuses: [Int: Int] = [:]
    var retryAfter: Set<String> = []
    /// Answers by body (the upstream's name, for a ``DelayedHTTPServer``).
    var bodies: [String: Int] = [:]
    /// Connections that closed before their requests were done.
    var brokenConnections = 0

    var answered: Int { statuses.values.reduce(0, +) }

    /// The latency below which `fraction` of the successful requests finished.
    func percentile(_ fraction: Double) -> Duration {
        let sorted = latencies.sorted()
        guard !sorted.isEmpty else { return .zero }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
    }

    mutating func merge(_ other: LoadResult) {
        latencies += other.latencies
        statuses.merge(other.statuses, uniquingKeysWith: +)
        retryAfter.formUnion(other.retryAfter)
        bodies.merge(other.bodies, uniquingKeysWith: +)
        brokenConnections += other.brokenConnections
    }
}

/// A closed-loop HTTP load: `connections` keep-alive connections to
/// 127.0.0.1:`port`, each sending `GET path` as soon as the previous answer
/// ended (or, with a `pause`, that long after it), until it has sent `requests` or `stop`
/// is set — bounded in count and time.
/// The clients run on `peers` (the shared peer loops unless told).
func httpLoad(port: Int, connections: Int, requests: Int, path: String = "/", pause: TimeAmount = .zero, stop: LoadStop = LoadStop(),
              deadline: Duration = .seconds(30), peers: any EventLoopGroup = peerGroup) async throws -> LoadResult {
    let stopFlag = StopCondition(stop: stop, deadline: ContinuousClock.now + deadline)
    return try await withThrowingTaskGroup(of: LoadResult.self) { group in
        for _ in 0..<connections {
            group.addTask {
                let done = peers.next().makePromise(of: LoadResult.self)
                let channel = try await ClientBootstrap(group: done.futureResult.eventLoop)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHTTPClientHandlers()
                            try channel.pipeline.syncOperations.addHandler(ClosedLoopClient(path: path, requests: requests, pause: pause, stop: stopFlag, done: done))
                        }
                    }
                    .connect(host: "127.0.0.1", port: port)
                    .get()
                defer { channel.close(promise: nil) }
                return try await done.futureResult.get()
            }
        }
        var total = LoadResult()
        for try await result in group { total.merge(result) }
        return total
    }
}

/// Tells a running ``httpLoad(port:connections:requests:path:pause:stop:deadline:peers:)`` to send no more requests.
final class LoadStop: Sendable {
    private let flag = Atomic(false)
    func stop() { flag.store(true, ordering: .relaxed) }
    var isStopped: Bool { flag.load(ordering: .relaxed) }
}

/// Stopped from outside, or by the clock.
private struct StopCondition: Sendable {
    let stop: LoadStop
    let deadline: ContinuousClock.Instant
    var isSet: Bool { stop.isStopped || ContinuousClock.now >= deadline }
}

private final class ClosedLoopClient: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let path: String
    let requests: Int
    let pause: TimeAmount
    let stop: StopCondition
    let done: EventLoopPromise<LoadResult>
    var sent = 0
    var started = ContinuousClock.now
    var status = 0
    var body = ""
    var result = LoadResult()
    var finished = false

    init(path: String, requests: Int, pause: TimeAmount, stop: StopCondition, done: EventLoopPromise<LoadResult>) {
        self.path = path
        self.requests = requests
        self.pause = pause
        self.stop = stop
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        sendNext(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            if let retry = head.headers.first(name: "retry-after") { result.retryAfter.insert(retry) }
        case .body(let buffer):
            body += String(buffer: buffer)
        case .end:
            result.statuses[status, default: 0] += 1
            result.bodies[body, default: 0] += 1
            body = ""
            if status == 200 { result.latencies.append(ContinuousClock.now - started) }
            if pause > .zero {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: pause) {
                    let (client, context) = bound.value
                    if !client.finished { client.sendNext(context) }   // (closed meanwhile: done)
                }
            } else {
                sendNext(context)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished && sent < requests && !stop.isSet { result.brokenConnections += 1 }
        finish()
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        done.succeed(result)
    }

    private func sendNext(_ context: ChannelHandlerContext) {
        guard sent < requests, !stop.isSet else {
            finish()
            return
        }
        sent += 1
        started = ContinuousClock.now
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: ["host": "load"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
