import MeshKernel
import NIOCore
import NIOEmbedded
import NIOHTTP1
import MeshTestSupport
import Testing
@testable import MeshProxy

/// The HTTP mode's handler on an embedded channel, with no upstream (connections cannot be made from
/// an embedded loop, so a routed request is answered 502).
private func pipeline(maxHeadBytes: Int = 4_096, authorization: HTTPAuthorization? = nil, sources: Set<SourceIdentity> = [],
                      scheduler: FairScheduler = FairScheduler(capacity: nil, weights: ["t": 1]),
                      loop: EmbeddedEventLoop = EmbeddedEventLoop(), pool: UpstreamPool? = nil, idleTimeout: TimeAmount? = nil,
                      bandwidth: TokenBucket? = nil, headTimeout: Duration = .seconds(10),
                      counters: TenantCounters = TenantCounters(tenant: "t", factory: nil),
                      cluster: HTTPCluster = apiCluster, originalDestination: Endpoint? = nil) throws -> EmbeddedChannel {
    let routing = HTTPRouting(routes: [HTTPRoute(pathPrefix: "/api", cluster: "api")],
                              clusters: ["api": cluster], requestHeadTimeout: headTimeout, maxHeadBytes: maxHeadBytes,
                              authorization: authorization)
    // (`pool` on `loop`: a pooled upstream connection and the client must share one.)
    let channel = EmbeddedChannel(loop: loop)
    try channel.pipeline.syncOperations.addHandler(
        HTTPProxyHandler(targets: RouteTargets(routing), pool: pool ?? UpstreamPool(eventLoop: loop), connectTimeout: .seconds(1),
                         counters: counters,
                         scheduler: scheduler, tenant: "t", sources: sources, bandwidth: bandwidth, idleTimeout: idleTimeout,
                         originalDestination: originalDestination))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000)).wait()   // active, as an accepted connection is
    return channel
}

/// The cluster the embedded pipelines route `/api` to.
private let apiCluster = HTTPCluster(endpoints: [Endpoint(.loopback, port: 9)])

/// An upstream connection of cluster `api` on an embedded channel of `loop` (`pool`'s), left idle in `pool`, so the next routed request leases it.
private func pooledUpstream(in pool: UpstreamPool, on loop: EmbeddedEventLoop) throws -> EmbeddedChannel {
    let channel = EmbeddedChannel(loop: loop)
    let handler = HTTPUpstreamHandler(buffers: nil)
    try channel.pipeline.syncOperations.addHandler(handler)
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
    pool.finish(UpstreamConnection(handler: handler, endpoint: Endpoint(.loopback, port: 9), clusterName: "api", cluster: apiCluster),
                reusable: true)
    return channel
}

/// A client pipeline whose routed requests go to a pooled upstream connection, both on one embedded loop.
private func pooledPipelines(idleTimeout: TimeAmount? = nil)
    throws -> (pool: UpstreamPool, loop: EmbeddedEventLoop, client: EmbeddedChannel, upstream: EmbeddedChannel) {
    let loop = EmbeddedEventLoop()
    let pool = UpstreamPool(eventLoop: loop)
    let upstream = try pooledUpstream(in: pool, on: loop)
    return (pool, loop, try pipeline(loop: loop, pool: pool, idleTimeout: idleTimeout), upstream)
}

/// Every buffer the channel wrote, each as text.
private func writes(_ channel: EmbeddedChannel) throws -> [String] {
    var writes: [String] = []
    while let buffer = try channel.readOutbound(as: ByteBuffer.self) { writes.append(String(buffer: buffer)) }
    return writes
}

/// Everything the channel wrote, as text.
private func written(_ channel: EmbeddedChannel) throws -> String { try writes(channel).joined() }

/// Feeds bytes; a decoder error the handler answered is not a test failure.
private func feed(_ channel: EmbeddedChannel, _ bytes: [UInt8]) {
    _ = try? channel.writeInbound(ByteBuffer(bytes: bytes))
}

@Suite("HTTP mode on an embedded channel")
struct HTTPProxyHandlerTests {
    @Test("a request's exchange and timeline stay at most 56 bytes: an optional of a larger value is destroyed through its type's metadata, a run-time call where each request sets and clears them")
    func perRequestStateFits() {
        #expect(MemoryLayout<HTTPProxyHandler.Exchange>.size <= 56, "\(MemoryLayout<HTTPProxyHandler.Exchange>.size) bytes")
        #expect(MemoryLayout<RequestTimeline>.size <= 56, "\(MemoryLayout<RequestTimeline>.size) bytes")
        #expect(MemoryLayout<HTTPProxyHandler.Exchange?>.size <= 56 && MemoryLayout<RequestTimeline?>.size <= 56, "their optionals too")
    }

    @Test("no route: 404 with the reason, and the connection stays open for the next request")
    func noRoute() throws {
        let channel = try pipeline()
        feed(channel, Array("GET /elsewhere HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        let answer = try written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(answer.contains("no route for host shop path /elsewhere"))
        #expect(answer.lowercased().contains("connection: keep-alive"))
        #expect(channel.isActive)
        feed(channel, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n".utf8))
        #expect(try written(channel).hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
    }

    @Test("authorization: the first matching rule decides, else the default; 403 names the source and keeps the connection; ambiguous paths are 400")
    func authorization() throws {
        let web = SourceIdentity.spiffe("spiffe://mesh.local/ns/shop/sa/web")
        let rules = HTTPAuthorization(rules: [
            HTTPAuthorizationRule(.deny, pathPrefix: "/api/admin"),
            HTTPAuthorizationRule(.allow, sources: [web, .workload(700)], methods: ["GET"], pathPrefix: "/api"),
            HTTPAuthorizationRule(.allow, methods: ["POST"], pathPrefix: "/api/hooks", headers: ["x-signed": "yes"]),
        ])
        // Allowed requests go on to their route (502 here: no upstreams from an embedded loop); refused ones get 403.
        let cases: [(Set<SourceIdentity>, String, String)] = [
            ([web], "GET /api/items HTTP/1.1\r\nHost: h\r\n\r\n", "502"),
            ([.workload(700)], "GET /api/items HTTP/1.1\r\nHost: h\r\n\r\n", "502"),
            ([web], "DELETE /api/items HTTP/1.1\r\nHost: h\r\n\r\n", "403"),
            ([web], "GET /api/admin/users HTTP/1.1\r\nHost: h\r\n\r\n", "403"),
            ([.workload(701)], "GET /api/items HTTP/1.1\r\nHost: h\r\n\r\n", "403"),
            ([], "POST /api/hooks/1 HTTP/1.1\r\nHost: h\r\nX-Signed: yes\r\nContent-Length: 0\r\n\r\n", "502"),
            ([], "POST /api/hooks/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", "403"),
            ([web], "GET /api/x/../admin/users HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
            ([web], "GET /api/%2e%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
            // Encoded ordinary characters and doubled slashes are read as the upstream reads them.
            ([web], "GET /%61pi/items HTTP/1.1\r\nHost: h\r\n\r\n", "502"),
            ([web], "GET /api/%61dmin/users HTTP/1.1\r\nHost: h\r\n\r\n", "403"),
            ([web], "GET //api//admin/users HTTP/1.1\r\nHost: h\r\n\r\n", "403"),
            ([web], "GET /api/..;/admin HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
            ([web], "GET /api/items;jsessionid=1 HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
            ([web], "GET /api/a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
        ]
        for (sources, request, status) in cases {
            let channel = try pipeline(authorization: rules, sources: sources)
            feed(channel, Array(request.utf8))
            let answer = try written(channel)
            #expect(answer.hasPrefix("HTTP/1.1 \(status)"), "\(sources) \(request.prefix(30)): \(answer.prefix(80))")
            #expect(channel.isActive, "a refused request closed its connection")
        }
        let channel = try pipeline(authorization: rules, sources: [.workload(701)])
        feed(channel, Array("GET /api/items HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        #expect(try written(channel).contains("workload 701 may not GET /api/items: no rule allows it (default deny)"))
        // Default allow: only the deny rule refuses.
        let open = try pipeline(authorization: HTTPAuthorization(rules: [HTTPAuthorizationRule(.deny, pathPrefix: "/api/admin")], defaultAction: .allow))
        feed(open, Array("GET /api/admin HTTP/1.1\r\nHost: h\r\n\r\nGET /api/public HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        let answers = try written(open)
        #expect(answers.hasPrefix("HTTP/1.1 403") && answers.contains("rule 0 denies it") && answers.contains("HTTP/1.1 502"), "\(answers)")
    }

    @Test("a request whose exchange is granted just as its client leaves gives the exchange back at once, not when the grant is delivered (a retired tenant's loop may be gone by then), and only once")
    func grantRacingTheClientsExit() throws {
        // One exchange in all; tenant t holds it (another of its connections), so the handler's request waits.
        let scheduler = FairScheduler(capacity: ProxyCapacity(maxConcurrentExchanges: 1, maxQueuedPerTenant: 4, maxQueueDelay: .seconds(10)),
                                      weights: ["t": 1])
        #expect(scheduler.acquire("t", canWait: false) { _ in } == .admitted)
        let channel = try pipeline(scheduler: scheduler)
        feed(channel, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try written(channel).isEmpty, "waiting for an exchange")
        // The other exchange ends: the waiting request is granted, its grant queued on the handler's loop...
        scheduler.release("t")
        #expect(scheduler.inFlight("t") == 1)
        // ... and the client leaves before it is delivered.
        channel.pipeline.fireChannelInactive()
        #expect(scheduler.inFlight("t") == 0)
        channel.embeddedEventLoop.run()   // the grant arrives to a handler that no longer waits
        #expect(scheduler.inFlight("t") == 0)
        #expect(scheduler.inFlight() == 0)
    }

    @Test("through a pooled upstream: a response head that needs no change goes to the client in one write with the body bytes that came with it; one that must change goes rebuilt, then the body")
    func responseWrites() throws {
        let (_, _, client, upstream) = try pooledPipelines()
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        feed(client, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try writes(upstream) == ["GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n"], "the request head as it came")
        try upstream.writeInbound(ByteBuffer(string: response))
        #expect(try writes(client) == [response])
        // An HTTP/1.0 client is told the connection stays: the head changes, and the body follows it.
        feed(client, Array("GET /api/y HTTP/1.0\r\nHost: shop\r\nConnection: keep-alive\r\n\r\n".utf8))
        #expect(try writes(upstream) == ["GET /api/y HTTP/1.0\r\nHost: shop\r\n\r\n"], "the same pooled connection, Connection left behind")
        try upstream.writeInbound(ByteBuffer(string: response))
        #expect(try writes(client) == ["HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\n", "ok"])
        #expect(client.isActive)
        #expect(!upstream.isActive, "an HTTP/1.0 request asks the upstream to close after it: the connection is not kept")
    }

    @Test("a drain closes a keep-alive connection between requests at once; one with a request in progress has it answered with Connection: close, then closes; so does one with a next request begun, one that has not sent its first request yet, and one whose next request waits unread behind the tenant's bandwidth")
    func drainClosesGracefully() throws {
        let idle = try pipeline()
        feed(idle, Array("GET /nowhere HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try written(idle).hasPrefix("HTTP/1.1 404"))
        idle.pipeline.fireUserInboundEventTriggered(ProxyDraining())
        #expect(!idle.isActive, "between requests, nothing in progress: closed at once")

        /// The drain leaves `channel` open (`why`); the request that comes next is answered with Connection: close, then it closes.
        func answersNextThenCloses(_ channel: EmbeddedChannel, _ why: Comment) throws {
            channel.pipeline.fireUserInboundEventTriggered(ProxyDraining())
            #expect(channel.isActive, why)
            feed(channel, Array("GET /nowhere HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
            let answer = try written(channel)
            #expect(answer.hasPrefix("HTTP/1.1 404") && answer.contains("connection: close"), "\(answer)")
            #expect(!channel.isActive)
        }
        // A new connection's first request may be on its way (unread, or held by a TLS handshake).
        try answersNextThenCloses(try pipeline(), "a connection that has answered nothing yet waits for its first request")
        // Reading paused by the bandwidth's debt: the next request may wait unread in the kernel.
        let throttled = try pipeline(bandwidth: TokenBucket(rate: 1, burst: 1))
        feed(throttled, Array("GET /nowhere HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try written(throttled).hasPrefix("HTTP/1.1 404"))
        try answersNextThenCloses(throttled, "reading is paused: a next request may be waiting unread")

        let (_, _, client, upstream) = try pooledPipelines()
        feed(client, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try writes(upstream) == ["GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n"])
        client.pipeline.fireUserInboundEventTriggered(ProxyDraining())
        #expect(client.isActive, "the request in progress is answered first")
        try upstream.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        let answered = try written(client)
        #expect(answered == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok", "\(answered)")
        #expect(!client.isActive)

        let begun = try pipeline()
        feed(begun, Array("GET /nowhere HTTP/1.1\r\nHo".utf8))
        begun.pipeline.fireUserInboundEventTriggered(ProxyDraining())
        #expect(begun.isActive, "a request begun is not cut")
        feed(begun, Array("st: shop\r\n\r\n".utf8))
        let answer = try written(begun)
        #expect(answer.hasPrefix("HTTP/1.1 404") && answer.contains("connection: close"), "\(answer)")
        #expect(!begun.isActive)
    }

    @Test("through a pooled upstream: a chunked response over several reads goes on read by read; a malformed body in the head's read is a 502 (nothing was sent yet), one in a later read closes the client (its head was sent)")
    func responseBodiesAcrossReads() throws {
        let (pool, loop, client, first) = try pooledPipelines()
        var upstream = first
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        feed(client, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        _ = try writes(upstream)
        try upstream.writeInbound(ByteBuffer(string: head + "2\r\nok\r\n"))
        #expect(try writes(client) == [head + "2\r\nok\r\n"])
        try upstream.writeInbound(ByteBuffer(string: "0\r\n\r\n"))
        #expect(try writes(client) == ["0\r\n\r\n"])
        #expect(client.isActive && upstream.isActive, "the exchange is over; both connections stay")

        // A malformed chunk size in the same read as the head: nothing went to the client, so it gets 502.
        // (A POST is not sent again.)
        feed(client, Array("POST /api/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n".utf8))
        _ = try writes(upstream)
        _ = try? upstream.writeInbound(ByteBuffer(string: head + "zz\r\n"))
        let answer = try written(client)
        #expect(answer.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n") && answer.contains("malformed response"), "\(answer)")
        #expect(client.isActive && !upstream.isActive)

        // The same in a later read: the head is out already, so the client connection closes instead.
        upstream = try pooledUpstream(in: pool, on: loop)
        feed(client, Array("POST /api/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n".utf8))
        _ = try writes(upstream)
        try upstream.writeInbound(ByteBuffer(string: head))
        #expect(try writes(client) == [head])
        _ = try? upstream.writeInbound(ByteBuffer(string: "zz\r\n"))
        #expect(!client.isActive && !upstream.isActive)
    }

    @Test("the head timeout does not run out while the tenant's bandwidth holds the client's reading: the wait is the proxy's; once the debt is paid, a silent client gets 408")
    func headTimeoutWaitsOutBandwidth() throws {
        let loop = EmbeddedEventLoop()
        let bucket = TokenBucket(rate: 1, burst: 1)
        let client = try pipeline(loop: loop, bandwidth: bucket, headTimeout: .seconds(1))
        feed(client, Array("GET /nowhere HTTP/1.1\r\nHo".utf8))   // 25 bytes at 1 a second: paused for about 24 s
        try expectWaitOverBandwidth(client, on: loop, bucket: bucket, pastTimeout: .milliseconds(1_500), answered: "408")
        #expect(!client.isActive)
    }

    @Test("the response timeout does not run out while the tenant's bandwidth holds the upstream's answer unread: the wait is the proxy's, not the upstream's; once the debt is paid, an upstream still silent gets 504")
    func responseTimeoutWaitsOutBandwidth() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool(eventLoop: loop)
        let upstream = try pooledUpstream(in: pool, on: loop)
        let bucket = TokenBucket(rate: 1, burst: 1)
        let client = try pipeline(loop: loop, pool: pool, bandwidth: bucket)
        feed(client, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))   // 36 bytes at 1 a second: held for about 35 s
        #expect(try writes(upstream).joined().hasPrefix("GET /api/x"), "the request went to the upstream")
        try expectWaitOverBandwidth(client, on: loop, bucket: bucket, pastTimeout: .seconds(32), answered: "504")   // (a timeout of 30 s)
    }

    /// Once `pastTimeout` has passed, with the tenant's bandwidth (`bucket`)
    /// still in debt, the client has had no answer and is open: the wait is
    /// the proxy's. Then the debt is forgiven (a raised rate) and its
    /// repayment timer fires: on its own clock again, the client is answered `status`.
    private func expectWaitOverBandwidth(_ client: EmbeddedChannel, on loop: EmbeddedEventLoop, bucket: TokenBucket, pastTimeout: TimeAmount,
                                         answered status: String) throws {
        loop.advanceTime(by: pastTimeout)
        let meanwhile = try written(client)
        #expect(client.isActive && meanwhile.isEmpty, "no \(status) while the proxy holds the reading: \(meanwhile)")
        bucket.update(rate: 1_000_000_000, burst: 1_000_000_000)
        loop.advanceTime(by: .seconds(40))
        let answer = try written(client)
        #expect(answer.hasPrefix("HTTP/1.1 \(status)"), "\(answer)")
    }

    @Test("at the tenant's cap of buffered bytes, a request head in pieces and pipelined requests are read on and answered (only more reading moves them: they never wait on the cap), and what the connection held is let go of once answered and when it closes")
    func tenantCapNeverStallsHeads() throws {
        let counters = TenantCounters(tenant: "t", factory: nil)
        counters.buffers.update(TenantLimits(maxTotalBufferedBytes: 16_384))
        counters.buffers.hold(1 << 20)   // the tenant's other connections hold far more than its cap
        let client = try pipeline(counters: counters)
        feed(client, Array("GET /nowhere HTTP/1.1\r\nHo".utf8))
        #expect(counters.buffers.heldBytes == (1 << 20) + 25, "the head's first piece is held and counted")
        feed(client, Array("st: shop\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: shop\r\n\r\nGET /nowhere HTTP/1.1\r\nHo".utf8))
        let answers = try written(client)
        #expect(answers.components(separatedBy: "HTTP/1.1 404").count == 3, "\(answers)")
        #expect(counters.buffers.waitCount == 0, "nothing waited on the cap")
        #expect(counters.buffers.heldBytes == (1 << 20) + 25, "the next head's first piece is held: \(counters.buffers.heldBytes)")
        _ = try? client.close().wait()
        #expect(counters.buffers.heldBytes == 1 << 20, "let go of with the connection: \(counters.buffers.heldBytes)")
    }

    @Test("idle timeout: a response streaming to a silent client keeps its connection; silence both ways closes it after the timeout, at most a quarter more")
    func idleTimeout() throws {
        let (_, loop, client, upstream) = try pooledPipelines(idleTimeout: .milliseconds(400))
        feed(client, Array("GET /api/x HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        _ = try writes(upstream)
        try upstream.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
        for _ in 0..<4 {
            loop.advanceTime(by: .milliseconds(300))
            try upstream.writeInbound(ByteBuffer(string: "2\r\nok\r\n"))   // only the upstream talks, to the client
        }
        try upstream.writeInbound(ByteBuffer(string: "0\r\n\r\n"))
        #expect(try written(client).hasSuffix("2\r\nok\r\n0\r\n\r\n"))
        loop.advanceTime(by: .milliseconds(399))
        #expect(client.isActive, "closed within the timeout of the last response bytes")
        loop.advanceTime(by: .milliseconds(101))
        #expect(!client.isActive, "open after the timeout and a quarter of silence")
    }

    @Test("a client that does not read its answers stops being read until it does")
    func clientBackpressure() throws {
        let channel = try pipeline()
        channel.isWritable = false
        feed(channel, Array("GET /elsewhere HTTP/1.1\r\nHost: shop\r\n\r\n".utf8))
        #expect(try written(channel).hasPrefix("HTTP/1.1 404"))
        // (An embedded channel keeps the options set on it but always reports autoRead as on.)
        func autoRead() -> Bool? { channel.options.first { $0.option is ChannelOptions.Types.AutoReadOption }?.value as? Bool }
        #expect(autoRead() == false)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(autoRead() == true)
    }

    @Test("transfer codings other than chunked, and TRACE with a body, are refused; framing headers survive Connection")
    func framing() throws {
        for request in ["POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                        "TRACE /api HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"] {
            let channel = try pipeline()
            feed(channel, Array(request.utf8))
            #expect(try written(channel).hasPrefix("HTTP/1.1 400"), "\(request.prefix(30))")
        }
        func sent(_ head: String, target: String = "/api") throws -> String {
            let parsed = try HTTPWireHead.request(ByteBuffer(string: head))
            let framing = try HTTPWireBody.request(parsed)
            return String(buffer: HTTPProxyHandler.upstreamHead(parsed, target: target, framing: framing, allocator: ByteBufferAllocator()))
        }
        // Hop-by-hop headers, and those Connection names, stay behind; the framing headers survive being named.
        let rebuilt = try sent("POST /api HTTP/1.1\r\nHost: h\r\nConnection: content-length, x-secret, keep-alive\r\nX-Secret: 1\r\n"
                               + "Content-Length: 5\r\nKeep-Alive: timeout=5\r\nExpect: 100-continue\r\n\r\n")
        #expect(rebuilt == "POST /api HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\n", "\(rebuilt)")
        #expect(try sent("POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
                == "POST /api HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n")
        #expect(try sent("POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                == "POST /api HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\n")
        // Nothing to change: the head goes on byte for byte; a canonical target replaces the one that came.
        let plain = "GET /api?q=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case:  value \r\n\r\n"
        #expect(try sent(plain, target: "/api?q=1") == plain)
        #expect(try sent(plain, target: "/api") == "GET /api HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: value\r\n\r\n")
        // Empty lines before the request line are not passed on.
        #expect(try sent("\r\n" + plain, target: "/api?q=1") == "GET /api?q=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: value\r\n\r\n")
    }

    @Test("malformed, oversized and smuggling requests: 400 or 431 and the connection closes")
    func refusals() throws {
        let cases: [(String, String)] = [
            ("NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400"),
            ("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 5_000) + "\r\n\r\n", "HTTP/1.1 431"),
            ("POST /api HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"),
            // An empty Transfer-Encoding beside a Content-Length: read as a length here, it must not become chunked upstream.
            ("POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\nContent-Length: 42\r\n\r\n0\r\n\r\nDELETE /admin HTTP/1.1\r\nHost: h\r\n\r\n",
             "HTTP/1.1 400"),
            ("POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,\r\n\r\n", "HTTP/1.1 400"),
            ("POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", "HTTP/1.1 400"),
            // Host: exactly one in HTTP/1.1.
            ("GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400"),
            ("GET /api HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        ]
        for (request, status) in cases {
            let channel = try pipeline()
            feed(channel, Array(request.utf8))
            let answer = try written(channel)
            #expect(answer.hasPrefix(status), "\(request.prefix(40)): \(answer.prefix(60))")
            #expect(!channel.isActive, "still open after \(status)")
        }
    }

    @Test("a header that routing or authorization reads must not be repeated (400, the connection stays); a client that half-closes inside a body is closed, not left waiting")
    func repeatedHeadersAndHalfClose() throws {
        let rules = HTTPAuthorization(rules: [HTTPAuthorizationRule(.allow, pathPrefix: "/api", headers: ["x-role": "user"])])
        let channel = try pipeline(authorization: rules)
        feed(channel, Array("GET /api/a HTTP/1.1\r\nHost: h\r\nX-Role: user\r\nX-Role: admin\r\n\r\n".utf8))
        let answer = try written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 400") && answer.contains("header x-role is repeated"), "\(answer)")
        #expect(channel.isActive)
        feed(channel, Array("GET /api/a HTTP/1.1\r\nHost: h\r\nX-Role: user\r\n\r\n".utf8))
        #expect(try written(channel).hasPrefix("HTTP/1.1 502"))

        let halfClosed = try pipeline()
        feed(halfClosed, Array("POST /elsewhere HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n0123456789".utf8))
        #expect(try written(halfClosed).hasPrefix("HTTP/1.1 404"))
        #expect(halfClosed.isActive)
        halfClosed.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        halfClosed.embeddedEventLoop.run()
        #expect(!halfClosed.isActive, "a request that can never end held its connection")
    }

    @Test("an original-destination cluster sends each connection's requests to its own destination (here, an event loop that cannot connect: 502 naming it), a connection without one gets 502 saying so; the pool keeps places only for destinations in use, however many were called")
    func originalDestination() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool(eventLoop: loop)
        let counters = TenantCounters(tenant: "t", factory: nil)
        for index in 0..<1_000 {
            let destination = Endpoint(.loopback, port: UInt16(20_000 + index))
            let channel = try pipeline(loop: loop, pool: pool, counters: counters, cluster: .originalDestination(), originalDestination: destination)
            feed(channel, Array("GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
            let answer = try written(channel)
            #expect(answer.hasPrefix("HTTP/1.1 502") && answer.contains("upstream \(destination) of cluster api unreachable"), "\(answer)")
            _ = try channel.finish(acceptAlreadyClosed: true)
        }
        #expect(pool.placeCount <= UpstreamPool.fewestPlacesSwept, "\(pool.placeCount) places kept for 1,000 destinations no longer in use")
        let unredirected = try pipeline(loop: loop, pool: pool, counters: counters, cluster: .originalDestination())
        feed(unredirected, Array("GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        let answer = try written(unredirected)
        #expect(answer.hasPrefix("HTTP/1.1 502") && answer.contains("cluster api goes to the connection's original destination, and this connection has none"), "\(answer)")
        #expect(counters.snapshot.missingOriginalDestinations == 1)
    }

    @Test("thousands of mutated requests: every answer is a well-formed status line, never a crash; once the connection closes, nothing is kept (no exchange of the scheduler, no buffered byte) and nothing is written later")
    func fuzz() throws {
        var generator = SeededGenerator(seed: 0xF0F0)
        let seeds = ["GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n", "POST /api HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
                     "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"].map { Array($0.utf8) }
        var statuses: [String: Int] = [:]
        for round in 0..<3_000 {
            let bytes = seeds[round % seeds.count].mutated(edits: 1...6, using: &generator)
            let (loop, scheduler, counters) = (EmbeddedEventLoop(), FairScheduler(capacity: nil, weights: ["t": 1]), TenantCounters(tenant: "t", factory: nil))
            let channel = try pipeline(scheduler: scheduler, loop: loop, counters: counters)
            feed(channel, bytes)
            let answer = try written(channel)
            if !answer.isEmpty {   // (empty: an incomplete request, nothing to answer yet)
                let status = String(answer.prefix(12))
                #expect(["HTTP/1.1 400", "HTTP/1.1 404", "HTTP/1.1 431", "HTTP/1.1 502"].contains(status), "\(bytes) -> \(answer.prefix(80))")
                statuses[status, default: 0] += 1
            }
            // Closed (by the proxy or now), nothing is kept: no exchange, no buffered byte, and no
            // timer that writes later (their time passes before `finish`, which cancels what is left).
            channel.close(promise: nil)
            loop.run()
            loop.advanceTime(by: .seconds(60))
            #expect(scheduler.inFlight() == 0 && counters.buffers.heldBytes == 0, "\(bytes): \(scheduler.inFlight()) exchanges, \(counters.buffers.heldBytes) bytes kept")
            #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "\(bytes): written after the close")
            _ = try channel.finish(acceptAlreadyClosed: true)
        }
        #expect(statuses.count >= 3, "the mutations reached too few outcomes: \(statuses)")
    }
}
