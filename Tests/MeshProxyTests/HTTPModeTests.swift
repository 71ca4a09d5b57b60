import Foundation
import Logging
import MeshKernel
@testable import MeshProxy
import MeshTelemetry
import MeshTelemetryPrometheus
import MeshTestSupport
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization
import Testing

@Suite("MeshProxy in HTTP mode", .serialized)
struct HTTPModeTests {
    private let loopback = IPAddress.loopback

    @Test("routes by host, path prefix and header to clusters taken in turn; 404, 502, 400, 431, 408 with reasons (a head trickled byte by byte too); keep-alive and pipelining; an unused keep-alive connection closed quietly")
    func routing() async throws {
        let servers = try [("A", 17_111), ("B", 17_112), ("C", 17_113)].map { name, port in
            try Background(["python3", "-c", namedHTTPServer, "\(port)", name])
        }
        defer { for server in servers { server.stop() } }
        #expect(try await awaitListeners(["127.0.0.1:17111", "127.0.0.1:17112", "127.0.0.1:17113"]))
        let routing = HTTPRouting(
            routes: [
                HTTPRoute(host: "api.local", pathPrefix: "/v1", cluster: "api"),
                HTTPRoute(pathPrefix: "/static", headers: ["x-canary": "yes"], cluster: "canary"),
                HTTPRoute(pathPrefix: "/static", cluster: "static"),
                HTTPRoute(pathPrefix: "/dead", cluster: "dead"),
                HTTPRoute(pathPrefix: "/flaky", cluster: "flaky"),
            ],
            clusters: [
                "api": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_111), Endpoint(loopback, port: 17_112)]),
                "static": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_113)]),
                "canary": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_111)]),
                "dead": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_199)]),
                "flaky": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_198), Endpoint(loopback, port: 17_113)]),
            ],
            requestHeadTimeout: .seconds(1))
        let tenant = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_061), mode: .http(routing))
        let registry = PrometheusCollectorRegistry()
        try await withProxy(ProxyConfiguration(tenants: [tenant]), metrics: registry) { proxy in
            let base = "http://127.0.0.1:17061"
            func curl(_ arguments: String) async throws -> String {
                try await offload { try run(["sh", "-c", "curl -s \(arguments)"]).check().output }
            }
            // Keep-alive: two requests on one connection, the cluster's endpoints in turn.
            #expect(try await curl("-H 'Host: api.local:17061' \(base)/v1/a -o /dev/stdout \(base)/v1/b") == "A /v1/a 0B /v1/b 0")
            #expect(try await curl("\(base)/static/x") == "C /static/x 0")
            #expect(try await curl("-H 'x-canary: yes' \(base)/static/y") == "A /static/y 0")
            #expect(try await curl("-H 'Host: api.local' -X POST --data-binary @/etc/services \(base)/v1/upload").hasPrefix("A /v1/upload "))
            let notFound = try await curl("-w ' %{http_code}' \(base)/nowhere")
            #expect(notFound.hasPrefix("no route for host 127.0.0.1:17061 path /nowhere") && notFound.hasSuffix(" 404"), "\(notFound)")
            // One endpoint of the cluster is down: the connect moves on to the other, no request fails.
            #expect(try await curl("\(base)/flaky/1 -o /dev/stdout \(base)/flaky/2 -o /dev/stdout \(base)/flaky/3") == "C /flaky/1 0C /flaky/2 0C /flaky/3 0")
            let unreachable = try await curl("-w ' %{http_code}' \(base)/dead/end")
            #expect(unreachable.hasSuffix(" 502") && unreachable.contains("unreachable"), "\(unreachable)")

            func raw(_ payload: String, pause: Double = 0) async throws -> String {
                try await offload { try run(["python3", "-c", rawHTTPClient, "127.0.0.1", "17061", payload, "\(pause)"]).check().output }
            }
            // Pipelined: two requests in one write, two answers in order.
            let pipelined = try await raw(#"b"GET /static/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /static/2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n""#)
            #expect(pipelined == "200 200 closed\n", "\(pipelined)")
            // A malformed request pipelined behind a good one: the good one is answered first, then 400 and close.
            let badBehind = try await raw(#"b"GET /static/1 HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n""#)
            #expect(badBehind == "200 400 closed\n", "\(badBehind)")
            // Malformed, too large, smuggling, too slow: answered and closed.
            #expect(try await raw(#"b"GARBAGE\r\n\r\n""#) == "400 closed\n")
            #expect(try await raw(#"b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n""#) == "431 closed\n")
            #expect(try await raw(#"b"POST /static/s HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n""#)
                    == "400 closed\n")
            #expect(try await raw(#"b"GET /static/slow HTTP/1.1\r\nHost: h\r\n""#, pause: 2) == "408 closed\n")
            // A head trickling in a byte at a time gets no more time than one sent at once (the timeout is not renewed by each read).
            let trickled = try await offload { try run(["python3", "-c", tricklingClient, "127.0.0.1", "17061"]).check().output }
            #expect(trickled == "408 closed before the head was whole\n", "\(trickled)")
            // A keep-alive connection left unused for the head timeout is closed quietly, and is no bad request.
            #expect(try await raw(#"b"GET /static/1 HTTP/1.1\r\nHost: h\r\n\r\n""#, pause: 2) == "200 closed\n")
            let statistics = try #require(proxy.statistics("web"))
            #expect(statistics.requestsWithoutRoute == 1)
            #expect(statistics.badRequests == 6)
            // Flaky's turns alternate, so each of its 3 requests met the dead endpoint first; plus dead's own.
            #expect(statistics.upstreamFailures == 4)
            // The tenant's HTTP metrics: every answer, by method and status.
            let exposition = registry.emitToString()
            #expect(exposition.contains(#"mesh_proxy_http_requests_total{tenant="web",http_request_method="GET",http_response_status_code="404"} 1"#))
            #expect(exposition.contains(#"mesh_proxy_http_requests_total{tenant="web",http_request_method="POST",http_response_status_code="200"} 1"#))
            #expect(exposition.contains(#"mesh_proxy_http_request_duration_seconds_count{tenant="web",http_request_method="GET",http_response_status_code="502"} 1"#))
        }
    }

    @Test("bodies of many megabytes cross in both directions, at the pace of the slower side")
    func largeBodies() async throws {
        let server = try await startNamedHTTPServer(port: 17114, name: "D")
        defer { server.stop() }
        let routing = HTTPRouting.everything(toLoopbackPort: 17_114)
        let tenant = TenantConfiguration(name: "big", listener: Endpoint(loopback, port: 17_063), mode: .http(routing),
                                         limits: TenantLimits(maxBufferedBytes: 65_536))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { _ in
            // 16 MiB up: the upstream counts what it got.
            let upload = try await offload {
                try run(["sh", "-c", "head -c 16777216 /dev/zero | curl -s -X POST -H 'Content-Type: application/octet-stream' --data-binary @- http://127.0.0.1:17063/up"]).check().output
            }
            #expect(upload == "D /up 16777216", "\(upload)")
            // 8 MiB down to a client reading at 8 MB/s: the proxy holds at most its water mark meanwhile.
            let download = try await offload {
                try run(["sh", "-c", "curl -s --limit-rate 8M -o /dev/null -w '%{size_download} %{http_code}' http://127.0.0.1:17063/bytes/8388608"]).check().output
            }
            #expect(download == "8388608 200", "\(download)")
            // The same to a slow client that asked to close after it: the close waits for the last byte
            // (writes still queued in the proxy when the response ends are not dropped).
            let closing = try await offload { try run(["python3", "-c", slowClosingDownload, "127.0.0.1", "17063", "8388608"]).check().output }
            #expect(closing == "8388608\n", "\(closing)")
        }
    }

    @Test("a client that stops reading holds the proxy to its tenant's maxBufferedBytes: the upstream is stopped about that much sooner with a small limit than a large one, and no byte is lost")
    func bufferedBytesBoundResponses() async throws {
        try await withTemporaryDirectory("stall") { directory in
            let size = 128 << 20, report = directory.appendingPathComponent("sent").path
            let server = try Background(["python3", "-c", stallReportingServer, "17148", String(size), report])
            defer { server.stop() }
            #expect(try await awaitListeners(["127.0.0.1:17148"], timeout: .seconds(10)))
            let routing = HTTPRouting.everything(toLoopbackPort: 17_148)
            let small = TenantConfiguration(name: "small", listener: Endpoint(loopback, port: 17_146), mode: .http(routing),
                                            limits: TenantLimits(maxBufferedBytes: 65_536))
            let large = TenantConfiguration(name: "large", listener: Endpoint(loopback, port: 17_147), mode: .http(routing),
                                            limits: TenantLimits(maxBufferedBytes: 48 << 20))
            try await withProxy(ProxyConfiguration(tenants: [small, large])) { _ in
                /// The bytes the upstream could send before the stalled client stopped it, and the body the client then got.
                func stalled(port: Int, path: String) async throws -> (sent: Int, received: String) {
                    let received = try await offload {
                        try run(["python3", "-c", stalledDownload, "127.0.0.1", String(port), path, report + path.replacingOccurrences(of: "/", with: "-")]).check().output
                    }
                    let sent = try String(contentsOfFile: report + path.replacingOccurrences(of: "/", with: "-"), encoding: .utf8)
                    return (Int(sent) ?? -1, received)
                }
                let bounded = try await stalled(port: 17_146, path: "/small")
                let roomy = try await stalled(port: 17_147, path: "/large")
                #expect(bounded.received == "\(size)\n" && roomy.received == "\(size)\n", "every byte arrives once the client reads")
                // Kernel socket buffers hold the same in both runs, give or take their autotuning; the
                // proxy itself holds up to 64 KiB in one and up to 48 MiB in the other.
                #expect(bounded.sent > 0 && bounded.sent < size && roomy.sent < size)
                #expect(roomy.sent - bounded.sent > 24 << 20, "sent before the stall: \(bounded.sent) with 64 KiB, \(roomy.sent) with 48 MiB")
            }
        }
    }

    @Test("an upstream that takes the request but never answers gets 504 after the response timeout; the client connection stays open; a client that resets while it waits lets its upstream connection go")
    func responseTimeout() async throws {
        // A sink that reads without ever answering.
        let silent = try Background(["python3", "-c", sinkServer, "17115", "1000000000"])
        defer { silent.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17115"], timeout: .seconds(10)))
        let routing = HTTPRouting.everything(toLoopbackPort: 17_115, responseTimeout: .seconds(1))
        let tenant = TenantConfiguration(name: "wait", listener: Endpoint(loopback, port: 17_064), mode: .http(routing))
        // The reset client's tenant waits 60 s for responses, so nothing but the reset lets its upstream connection go.
        var patientRouting = routing
        patientRouting.responseTimeout = .seconds(60)
        let patient = TenantConfiguration(name: "patient", listener: Endpoint(loopback, port: 17_149), mode: .http(patientRouting))
        try await withProxy(ProxyConfiguration(tenants: [tenant, patient])) { proxy in
            let start = ContinuousClock.now
            // Two requests on one connection: both time out, the second reuses the connection.
            let answers = try await offload {
                try run(["sh", "-c", "curl -s -w '%{http_code} %{num_connects}\\n' -o /dev/null http://127.0.0.1:17064/a -o /dev/null http://127.0.0.1:17064/b"]).check().output
            }
            #expect(answers == "504 1\n504 0\n", "\(answers)")
            #expect(ContinuousClock.now - start >= .seconds(2))
            let reason = try await offload { try run(["curl", "-s", "http://127.0.0.1:17064/c"]).check().output }
            #expect(reason.hasPrefix("no response from the upstream within 1"), "\(reason)")
            #expect(try #require(proxy.statistics("wait")).upstreamFailures == 3)

            // A client that resets its connection while its request waits upstream: the upstream connection is let go too.
            @Sendable func upstreamConnections() -> Int {
                (try? run(["ss", "-Htn", "state", "established", "dst", "127.0.0.1:17115"]).check().output).map { $0.split(separator: "\n").count } ?? -1
            }
            /// Waits (off the concurrency pool) until `count` connections to the upstream are open.
            func upstreamConnections(become count: Int) async throws -> Bool {
                try await offload { eventually(timeout: .seconds(10)) { upstreamConnections() == count } }
            }
            #expect(try await upstreamConnections(become: 0), "the timed-out requests' connections are gone")
            let go = try GoSignal()
            defer { go.remove() }
            let resetter = try Background(["python3", "-c", """
                import os, socket, struct, sys, time
                s = socket.create_connection(("127.0.0.1", 17149)); s.sendall(b"GET /d HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n")
                while not os.path.exists(sys.argv[1]): time.sleep(0.01)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
                """, go.path])
            defer { resetter.stop() }
            #expect(try await upstreamConnections(become: 1), "the request never reached the upstream")
            #expect(go.give())
            #expect(try await upstreamConnections(become: 0), "the upstream connection of a reset client was kept (its tenant's response timeout is 60 s)")
            #expect(try #require(proxy.statistics("patient")).upstreamFailures == 0)
        }
    }

    @Test("an upstream that never takes the connection (its accept queue full, so the kernel drops the SYNs) is answered 502 with the reason once the tenant's connect timeout has passed; the next request too, and both are counted")
    func connectTimeout() async throws {
        let unreachable = try await startServer(fullBacklogServer, named: "fullBacklogServer", port: 17_249)
        defer { unreachable.stop() }
        #expect(await eventually(timeout: .seconds(10)) {
            (try? run(["ss", "-Htn", "state", "established", "dst", "127.0.0.1:17249"]).check().output.isEmpty) == false
        }, "the server's own connection never filled its accept queue")
        let tenant = TenantConfiguration(name: "unreachable", listener: Endpoint(loopback, port: 17_250),
                                         mode: .http(.everything(toLoopbackPort: 17_249)), connectTimeout: .milliseconds(300))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let start = ContinuousClock.now
            let answers = try await offload {
                try run(["curl", "-s", "--max-time", "10", "-w", " %{http_code}|", "http://127.0.0.1:17250/a", "http://127.0.0.1:17250/b"]).check().output
            }
            let elapsed = ContinuousClock.now - start
            let parts = answers.split(separator: "|")
            #expect(parts.count == 2 && parts.allSatisfy { $0.hasSuffix(" 502") && $0.contains("unreachable: Connect timeout (300 ms)") }, "\(answers)")
            #expect(elapsed >= .milliseconds(600) && elapsed < .seconds(5), "two connect timeouts of 300 ms took \(elapsed)")
            #expect(try #require(proxy.statistics("unreachable")).upstreamFailures == 2)
        }
    }

    @Test("framing is rebuilt for the upstream (no smuggling through a chunked GET or Connection: content-length); HEAD answers carry no body; CONNECT is 501; upgrade requests are answered plainly; the proxy answers Expect: 100-continue; a half-closed client's pipelined requests are all answered; a slow upload is not cut by the response timeout")
    func framing() async throws {
        let recorder = try await DelayedHTTPServer(port: 17_141, serviceTime: .milliseconds(1), name: "R")
        defer { Task { await recorder.stop() } }
        let named = try await startNamedHTTPServer(port: 17142, name: "N")
        defer { named.stop() }
        let routing = HTTPRouting(routes: [HTTPRoute(pathPrefix: "/r", cluster: "recorder"), HTTPRoute(pathPrefix: "/n", cluster: "named")],
                                  clusters: ["recorder": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_141)]),
                                             "named": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_142)])],
                                  responseTimeout: .seconds(1))
        let tenant = TenantConfiguration(name: "frames", listener: Endpoint(loopback, port: 17_085), mode: .http(routing))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            func raw(_ payload: String) async throws -> String {
                try await offload { try run(["python3", "-c", rawHTTPClient, "127.0.0.1", "17085", payload, "0"]).check().output }
            }
            // A GET whose chunked body (coding name in capitals) holds a request: the upstream gets one request, its body framed.
            let smuggled = try await raw(#"b"GET /r/public HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: Chunked\r\n\r\n22\r\nGET /r/admin HTTP/1.1\r\nHost: h\r\n\r\n\r\n0\r\n\r\n""#)
            #expect(smuggled == "200 closed\n", "\(smuggled)")
            #expect(recorder.requests == ["GET /r/public"], "\(recorder.requests)")
            // Connection naming a framing header does not strip it.
            let framed = try await offload {
                try run(["curl", "-s", "-H", "Connection: content-length", "-d", "hello", "http://127.0.0.1:17085/n/x"]).check().output
            }
            #expect(framed == "N /n/x 5")
            // HEAD: the upstream's answer and the proxy's own (404) carry no body; the connection goes on.
            for (first, second) in [("/r/head", "/r/after"), ("/x/nowhere", "/r/after")] {
                let answers = try await offload { try run(["python3", "-c", headThenGetClient, "127.0.0.1", "17085", first, second]).check().output }
                #expect(answers == (first == "/x/nowhere" ? "404 0 200 R\n" : "200 0 200 R\n"), "\(first): \(answers)")
            }
            #expect(try await raw(#"b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n""#) == "501 closed\n")
            // curl asks to upgrade to h2c: answered as HTTP/1.1, and its next request goes on a new connection.
            let upgraded = try await offload {
                try run(["curl", "-s", "--http2", "http://127.0.0.1:17085/n/a", "http://127.0.0.1:17085/n/b"]).check().output
            }
            #expect(upgraded == "N /n/a 0N /n/b 0")
            // Expect: 100-continue is answered at once (curl would otherwise wait 20 s, past its 10 s limit).
            let continued = try await offload {
                try run(["curl", "-s", "--max-time", "10", "--expect100-timeout", "20", "-H", "Expect: 100-continue",
                         "--data-binary", "@/etc/services", "http://127.0.0.1:17085/n/e"]).check().output
            }
            let size = try FileManager.default.attributesOfItem(atPath: "/etc/services")[.size] as? Int ?? -1
            #expect(continued == "N /n/e \(size)", "\(continued)")
            // Two pipelined requests, then the client's half-close: both are answered.
            let halfClosed = try await offload {
                try run(["python3", "-c", halfClosingHTTPClient, "127.0.0.1", "17085",
                         #"b"GET /r/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /r/2 HTTP/1.1\r\nHost: h\r\n\r\n""#]).check().output
            }
            #expect(halfClosed == "200 200\n", "\(halfClosed)")
            // An upload of about 2 s under a 1 s response timeout: the timeout starts once the request is sent whole.
            let uploaded = try await offload {
                try run(["sh", "-c", "head -c 100000 /dev/zero | curl -s --limit-rate 50k --data-binary @- http://127.0.0.1:17085/n/up"]).check().output
            }
            #expect(uploaded == "N /n/up 100000", "\(uploaded)")
            #expect(proxy.statistics("frames")?.upstreamFailures == 0)
        }
    }

    @Test("on the tenant's splice loop every read goes into the loop's one receive buffer, which no handler keeps: after the first read none allocates — keep-alive requests, bodies both ways, responses larger than a read, pipelined requests waiting behind an exchange — on the tenant's own splice loop, and on a shared group's",
          arguments: [false, true])
    func receiveBufferReused(sharedGroup: Bool) async throws {
        let (port, upstream): (UInt16, UInt16) = sharedGroup ? (17_173, 17_174) : (17_171, 17_172)
        let server = try await startNamedHTTPServer(port: Int(upstream), name: "R")
        defer { server.stop() }
        let routing = HTTPRouting(routes: [HTTPRoute(cluster: "backend")], clusters: ["backend": HTTPCluster(endpoints: [Endpoint(loopback, port: upstream)])])
        let tenant = TenantConfiguration(name: "reads", listener: Endpoint(loopback, port: port), mode: .http(routing))
        let group = sharedGroup ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: [tenant]), group: group) { proxy in
            func curl(_ arguments: String) async throws -> String {
                try await offload { try run(["sh", "-c", "curl -s \(arguments)"]).check().output }
            }
            #expect(try await curl("http://127.0.0.1:\(port)/first") == "R /first 0")
            let loop = try #require(proxy.spliceLoop(of: "reads"), "HTTP is served on the tenant's splice loop")
            func allocated() -> Int { loop.receiveBuffersAllocated.load(ordering: .relaxed) }
            #expect(allocated() == 1, "the first read allocates the buffer")
            let load = try await httpLoad(port: Int(port), connections: 4, requests: 50)
            #expect(load.statuses == [200: 200])
            let base = "http://127.0.0.1:\(port)"
            let size = try FileManager.default.attributesOfItem(atPath: "/etc/services")[.size] as? Int ?? -1
            let posted = try await curl("--data-binary @/etc/services \(base)/a --next -s --data-binary @/etc/services \(base)/b")
            #expect(posted == "R /a \(size)R /b \(size)", "\(posted)")
            #expect(try await curl("\(base)/bytes/300000 | wc -c").trimmingCharacters(in: .whitespacesAndNewlines) == "300000")
            // Three requests in one write: two wait in the handler's input while the first is answered.
            let pipelined = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", String(port),
                         #"b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n""#, "0"]).check().output
            }
            #expect(pipelined == "200 200 200 closed\n", "\(pipelined)")
            #expect(allocated() == 1, "\(allocated() - 1) reads allocated a receive buffer after the first")
        }
    }

    @Test("every byte of requests and responses arrives as sent: random bodies around a read's size, Content-Length framed or chunked in random pieces both ways, responses until close, over keep-alive connections at once — on the tenant's own splice loop, and on a shared group's",
          arguments: [false, true])
    func bodiesArriveIntact(sharedGroup: Bool) async throws {
        let (port, upstream): (UInt16, UInt16) = sharedGroup ? (17_177, 17_178) : (17_175, 17_176)
        let server = try await startServer(integrityServer, named: "integrityServer", port: Int(upstream))
        defer { server.stop() }
        let tenant = TenantConfiguration(name: "bodies", listener: Endpoint(loopback, port: port), mode: .http(.everything(toLoopbackPort: upstream)))
        let group = sharedGroup ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: [tenant]), group: group) { proxy in
            let verdict = try await checkBodyIntegrity(port: port)
            #expect(verdict == "ok 120")
            #expect(proxy.spliceLoop(of: "bodies") != nil, "served on a splice loop")
            #expect(proxy.statistics("bodies")?.upstreamFailures == 0)
        }
    }

    @Test("live reconfiguration under load: while keep-alive requests flow through one tenant, another is removed, added back, re-routed, limited and moved to another port, and the busy tenant's own weight changes — every request is answered 200 and no connection breaks")
    func reconfigurationUnderLoad() async throws {
        let server = try await startNamedHTTPServer(port: 17_191, name: "L")
        defer { server.stop() }
        let other = try await startNamedHTTPServer(port: 17_194, name: "O")
        defer { other.stop() }
        var busy = TenantConfiguration(name: "busy", listener: Endpoint(loopback, port: 17_192), mode: .http(.everything(toLoopbackPort: 17_191)))
        var churn = TenantConfiguration(name: "churn", listener: Endpoint(loopback, port: 17_193), mode: .http(.everything(toLoopbackPort: 17_191)))
        try await withProxy(ProxyConfiguration(tenants: [busy, churn])) { proxy in
            let stop = LoadStop()
            let load = Task { try await httpLoad(port: 17_192, connections: 4, requests: 1_000_000, stop: stop, deadline: .seconds(60)) }
            /// Waits until the busy tenant has routed `more` requests past what it had, so each change lands under load.
            func underLoad(_ more: Int = 50) async {
                let base = proxy.statistics("busy")?.requestsRouted ?? 0
                #expect(await eventually(timeout: .seconds(20)) { (proxy.statistics("busy")?.requestsRouted ?? 0) >= base + more })
            }
            await underLoad()
            try await proxy.apply(ProxyConfiguration(tenants: [busy]))
            await underLoad()
            try await proxy.apply(ProxyConfiguration(tenants: [busy, churn]))
            await underLoad()
            churn.mode = .http(.everything(toLoopbackPort: 17_194))
            churn.limits = TenantLimits(maxConnections: 3, requestsPerSecond: 100)
            try await proxy.apply(ProxyConfiguration(tenants: [busy, churn]))
            let rerouted = try await offload { try run(["curl", "-s", "http://127.0.0.1:17193/r"]).check().output }
            #expect(rerouted == "O /r 0")
            await underLoad()
            churn.listener = Endpoint(loopback, port: 17_195)
            try await proxy.apply(ProxyConfiguration(tenants: [busy, churn]))
            await underLoad()
            busy.weight = 5
            try await proxy.apply(ProxyConfiguration(tenants: [busy, churn]))
            await underLoad()
            stop.stop()
            let result = try await load.value
            #expect(result.brokenConnections == 0)
            #expect(result.statuses.keys.sorted() == [200] && result.answered >= 300, "\(result.statuses)")
            #expect(result.bodies.keys.sorted() == ["L / 0"], "\(result.bodies.keys)")
        }
    }

    @Test("a graceful shutdown closes an idle keep-alive connection and one not used yet at once, answers a request in flight with Connection: close before closing its connection, then ends as soon as that is done, far within its head and drain timeouts")
    func gracefulDrain() async throws {
        let server = try await DelayedHTTPServer(port: 17_201, serviceTime: .seconds(1), name: "slow")
        defer { Task { await server.stop() } }
        let tenant = TenantConfiguration(name: "drained", listener: Endpoint(loopback, port: 17_202), mode: .http(.everything(toLoopbackPort: 17_201)))
        let proxy = try MeshProxy(configuration: ProxyConfiguration(tenants: [tenant], drainTimeout: .seconds(30)), logger: Logger(label: "test"))
        let group = ServiceGroup(configuration: .init(services: [proxy], logger: Logger(label: "test")))
        let finished = Atomic(false)
        let running = Task {
            defer { finished.store(true, ordering: .relaxed) }
            try await group.run()
        }
        defer { running.cancel() }
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("drained") != nil })
        let clients = try Background(["python3", "-c", drainingClients, "17202"])
        defer { clients.stop() }
        // A answered, B routed and waiting for its 1 s answer, C accepted and not used: the drain starts now.
        #expect(await eventually(timeout: .seconds(10)) {
            proxy.statistics("drained").map { $0.requestsRouted == 2 && $0.activeConnections == 3 } ?? false
        })
        await group.triggerGracefulShutdown()
        // (B's answer takes 1 s; an unused connection left open would hold the drain for the 10 s head timeout.)
        #expect(await eventually(timeout: .seconds(5)) { finished.load(ordering: .relaxed) }, "the drain waited for a timeout")
        #expect(await clients.finish() == "ready\nA closed B HTTP/1.1 200 OK close closed C closed\n")
    }

    @Test("a tenant's bandwidth limits its HTTP both ways: at 1 MiB/s a 3 MB download and a 3 MB upload each take over 1.5 s and arrive whole, and reads are counted as throttled; a tenant without a limit is not throttled")
    func httpBandwidth() async throws {
        let server = try await startNamedHTTPServer(port: 17_203, name: "W")
        defer { server.stop() }
        let slow = TenantConfiguration(name: "slow", listener: Endpoint(loopback, port: 17_204), mode: .http(.everything(toLoopbackPort: 17_203)),
                                       limits: TenantLimits(bytesPerSecond: 1 << 20))
        let fast = TenantConfiguration(name: "fast", listener: Endpoint(loopback, port: 17_205), mode: .http(.everything(toLoopbackPort: 17_203)))
        let folder = try makeTemporaryDirectory("bandwidth")
        defer { try? FileManager.default.removeItem(at: folder) }
        let upload = folder.appendingPathComponent("upload").path
        try Data(count: 3_000_000).write(to: URL(fileURLWithPath: upload))
        try await withProxy(ProxyConfiguration(tenants: [slow, fast])) { proxy in
            /// curl's output (ending with `writeOut`'s) and the seconds its transfer took.
            func timed(_ arguments: String, writeOut: String = "") async throws -> (output: String, seconds: Double) {
                let output = try await offload { try run(["sh", "-c", "curl -s -w '\(writeOut) %{time_total}' \(arguments)"]).check().output }
                let words = output.split(separator: " ")
                return (words.dropLast().joined(separator: " "), Double(words.last ?? "") ?? -1)
            }
            // Burst 1 MiB, then 1 MiB a second: 3 MB take at least (3,000,000 − 1,048,576) / 1,048,576 ≈ 1.86 s.
            let download = try await timed("-o /dev/null http://127.0.0.1:17204/bytes/3000000", writeOut: "%{size_download}")
            #expect(download.output == "3000000" && download.seconds >= 1.5, "\(download)")
            let throttledDownload = try #require(proxy.statistics("slow")?.throttledReads)
            #expect(throttledDownload > 0)
            let uploaded = try await timed("--data-binary @\(upload) http://127.0.0.1:17204/up")
            #expect(uploaded.output == "W /up 3000000" && uploaded.seconds >= 1.5, "\(uploaded)")
            #expect((proxy.statistics("slow")?.throttledReads ?? 0) > throttledDownload)
            let unlimited = try await timed("-o /dev/null http://127.0.0.1:17205/bytes/3000000", writeOut: "%{size_download}")
            #expect(unlimited.output == "3000000")
            #expect(proxy.statistics("fast")?.throttledReads == 0)
        }
    }

    @Test("a tenant over its request rate is answered 429 with Retry-After and counted, never reaching its cluster; another tenant is not limited; a raised rate applies live")
    func requestRate() async throws {
        let server = try await startNamedHTTPServer(port: 17143, name: "R")
        defer { server.stop() }
        let routing = HTTPRouting.everything(toLoopbackPort: 17_143)
        var limited = TenantConfiguration(name: "limited", listener: Endpoint(loopback, port: 17_086), mode: .http(routing),
                                          limits: TenantLimits(requestsPerSecond: 5))
        let open = TenantConfiguration(name: "open", listener: Endpoint(loopback, port: 17_087), mode: .http(routing))
        let registry = PrometheusCollectorRegistry()
        try await withProxy(ProxyConfiguration(tenants: [limited, open]), metrics: registry) { proxy in
            /// 40 requests on one keep-alive connection, as fast as curl sends them: each one's status and Retry-After.
            func burst(_ port: Int) async throws -> (answers: [String], seconds: Double) {
                let urls = (0..<40).map { "-o /dev/null http://127.0.0.1:\(port)/r/\($0)" }.joined(separator: " ")
                let clock = ContinuousClock(), started = clock.now
                let output = try await offload {
                    try run(["sh", "-c", "curl -s -w '%{http_code} %header{retry-after}\\n' \(urls)"]).check().output
                }
                return (output.split(separator: "\n").map(String.init), (clock.now - started).inSeconds)
            }
            let (answers, seconds) = try await burst(17_086)
            let served = answers.filter { $0 == "200 " }.count, refused = answers.filter { $0 == "429 1" }.count
            #expect(served + refused == 40, "\(answers)")
            // The bucket holds 5 and refills 5 a second while the burst runs.
            #expect(served >= 5 && served <= 5 + Int(seconds * 5) + 1, "\(served) served in \(seconds) s")
            #expect(refused > 0)
            let statistics = try #require(proxy.statistics("limited"))
            #expect(statistics.rateLimitedRequests == refused && statistics.requestsRouted == served)
            let exposition = registry.emitToString()
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="limited",outcome="rate_limited_request"} \#(refused)"#), "\(exposition)")
            #expect(exposition.contains(#"mesh_proxy_http_requests_total{tenant="limited",http_request_method="GET",http_response_status_code="429"} \#(refused)"#))

            let unlimited = try await burst(17_087).answers
            #expect(unlimited.count == 40 && unlimited.allSatisfy { $0 == "200 " }, "\(unlimited)")
            #expect(proxy.statistics("open")?.rateLimitedRequests == 0)

            limited.limits.requestsPerSecond = 100_000
            try await proxy.apply(ProxyConfiguration(tenants: [limited, open]))
            let raised = try await burst(17_086).answers
            #expect(raised.count == 40 && raised.allSatisfy { $0 == "200 " }, "\(raised)")
        }
    }

    @Test("responses are relayed by their own framing: chunked in pieces with a trailer, until close, after 103 Early Hints; a malformed one is 502 (an idempotent request tried once more first); one with bytes past its length does not poison the next request; an answer before the upload ends drops the rest of it — served on the tenant's own splice loop, or, in a shared event-loop group, on the shared splice loop beside its listener's event loop, which stops with the proxy",
          arguments: [false, true])
    func responseFraming(sharedGroup: Bool) async throws {
        let upstreamPort: UInt16 = sharedGroup ? 17_170 : 17_144, port: UInt16 = sharedGroup ? 17_046 : 17_088
        let server = try Background(["python3", "-c", framingServer, String(upstreamPort)])
        defer { server.stop() }
        #expect(try await awaitListeners(["127.0.0.1:\(upstreamPort)"]))
        let routing = HTTPRouting.everything(toLoopbackPort: upstreamPort)
        let tenant = TenantConfiguration(name: "framing", listener: Endpoint(loopback, port: port), mode: .http(routing))
        let group = sharedGroup ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        let servedOn = Mutex<SpliceLoop?>(nil)
        try await withProxy(ProxyConfiguration(tenants: [tenant]), group: group) { proxy in
            func curl(_ arguments: String) async throws -> String {
                try await offload { try run(["sh", "-c", "curl -s --max-time 10 \(arguments)"]).check().output }
            }
            defer { servedOn.withLock { $0 = proxy.spliceLoop(of: "framing") } }
            let base = "http://127.0.0.1:\(port)"
            // Chunked, the trailer included, then a second request on the same connection.
            let chunked = try await curl("-w ' %{http_code} %{num_connects}\\n' \(base)/chunked \(base)/ok")
            #expect(chunked == "hello world 200 1\nok 200 0\n", "\(chunked)")
            let raw = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", String(port), #"b"GET /chunked HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n""#, "0"]).check().output
            }
            #expect(raw == "200 closed\n", "\(raw)")
            // Until close: the body arrives whole and the client's connection closes after it.
            let untilClose = try await curl("-D - \(base)/close")
            #expect(untilClose.hasSuffix("\r\n\r\nuntil the end") && untilClose.lowercased().contains("connection: close"), "\(untilClose)")
            // 103 goes to the client before the answer.
            let early = try await curl("-D - \(base)/early")
            #expect(early.hasPrefix("HTTP/1.1 103 Early Hints\r\n") && early.contains("HTTP/1.1 200 OK") && early.hasSuffix("early"), "\(early)")
            let malformed = try await curl("-w ' %{http_code}' \(base)/malformed")
            #expect(malformed.hasSuffix(" 502") && malformed.contains("malformed response"), "\(malformed)")
            // A malformed body in the head's read: nothing reached the client, so a GET is sent once more
            // (the cluster's one retry), then 502; a POST is not sent again.
            let retried = proxy.statistics("framing")?.retriedRequests ?? -1
            let malformedBody = try await curl("-w ' %{http_code}' \(base)/malformed-body")
            #expect(malformedBody.hasSuffix(" 502") && malformedBody.contains("malformed response"), "\(malformedBody)")
            #expect(proxy.statistics("framing")?.retriedRequests == retried + 1)
            let postedMalformedBody = try await curl("-w ' %{http_code}' -d x \(base)/malformed-body")
            #expect(postedMalformedBody.hasSuffix(" 502") && postedMalformedBody.contains("malformed response"), "\(postedMalformedBody)")
            #expect(proxy.statistics("framing")?.retriedRequests == retried + 1)
            // Bytes past the length: the client gets the answer as framed; that upstream connection is not used again.
            let extra = try await curl("-w ' %{http_code}\\n' \(base)/extra \(base)/ok")
            #expect(extra == "ok 200\nok 200\n", "\(extra)")
            // An answer before the upload ends: the client gets it, the rest of its upload is dropped, and its next request is served.
            let early413 = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", String(port),
                         #"b"POST /refuse HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1048576 + b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n""#,
                         "0"]).check().output
            }
            #expect(early413 == "413 200 open\n", "\(early413)")
            // The same from an upstream that stopped reading, so that the client's reading was paused for it
            // (32 MiB do not fit in the buffers between them): reading resumes once the answer lets the exchange go.
            let held413 = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", String(port),
                         #"b"POST /hold-refuse HTTP/1.1\r\nHost: h\r\nContent-Length: 33554432\r\n\r\n" + b"x" * 33554432 + b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n""#,
                         "0"]).check().output
            }
            #expect(held413 == "413 200 open\n", "\(held413)")
            #expect(proxy.statistics("framing")?.badRequests == 0)
        }
        let loop = try #require(servedOn.withLock { $0 }, "served on a splice loop")
        #expect(await eventually(timeout: .seconds(10)) { !loop.isRunning }, "the splice loop ends with the proxy")
    }

    @Test("the mesh-proxy program with --metrics serves its Prometheus exposition: promtool accepts it, and requests are counted per tenant and as proxy exchanges; --threads sets its event loops")
    func programMetrics() async throws {
        let server = try await startNamedHTTPServer(port: 17145, name: "M")
        defer { server.stop() }
        // One event loop more than the default (one per CPU) serves the tenants and the metrics endpoint.
        let threads = System.coreCount + 1
        let proxy = try Background([meshProxyProgram, "--metrics", "127.0.0.1:17090", "--threads", String(threads),
                                    "--tenant", "shop=127.0.0.1:17089,upstream=127.0.0.1:17145,mode=http"])
        defer { proxy.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17089", "127.0.0.1:17090", "127.0.0.1:17145"]))
        func eventLoops() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.pid)/task").map {
                (try? String(contentsOfFile: "/proc/\(proxy.pid)/task/\($0)/comm", encoding: .utf8)) ?? ""
            }.filter { $0.hasPrefix("NIO-ELT") }
        }
        #expect(try eventLoops().count == threads)
        let answers = try await offload {
            try run(["sh", "-c", "curl -s -w '%{http_code} ' -o /dev/null http://127.0.0.1:17089/a -o /dev/null http://127.0.0.1:17089/b"
                     + " --next -s -w '%{http_code} ' -o /dev/null -d x http://127.0.0.1:17089/c"]).check().output
        }
        #expect(answers == "200 200 200 ", "\(answers)")
        let exposition = try await offload { try run(["curl", "-s", "http://127.0.0.1:17090/metrics"]).check().output }
        #expect(exposition.contains(#"mesh_proxy_http_requests_total{tenant="shop",http_request_method="GET",http_response_status_code="200"} 2"#),
                "\(exposition)")
        #expect(exposition.contains(#"mesh_http_requests_total{source_workload="identity-0",destination_workload="unknown",http_request_method="POST","#
                                    + #"http_response_status_code="200",reporter="proxy",tenant="shop"} 1"#), "\(exposition)")
        #expect(exposition.contains("mesh_proxy_tenants 1") && exposition.contains("mesh_proxy_exchanges_in_flight 0"))
        #expect(exposition.contains("# HELP mesh_http_requests_total \(HTTPMetrics.help["mesh_http_requests_total"]!)"), "MeshTelemetry's help texts")
        let promtool = try await offload { try run(["promtool", "check", "metrics"], input: exposition) }
        #expect(promtool.status == 0, "promtool: \(promtool.output) \(promtool.error)")
        let missing = try await offload { try run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:17090/other"]).check().output }
        #expect(missing == "404")
        #expect(try eventLoops().count == threads, "no event loop made on demand beside them")
        #expect(await proxy.terminate() == 0)
    }

    @Test("an HTTP configuration naming a missing cluster, or with no route, or a cluster without endpoints, or an original-destination cluster with some, or a request rate on a TCP tenant, is refused with its field")
    func invalidRouting() {
        let routing = HTTPRouting(routes: [HTTPRoute(cluster: "nope")], clusters: [:])
        let tenant = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(routing))
        let error = #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [tenant]).validate() }
        #expect(error?.field == "http.routes[0].cluster")
        let empty = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(HTTPRouting(routes: [], clusters: [:])))
        #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [empty]).validate() }
        func clusterError(_ cluster: HTTPCluster) -> ProxyConfigurationError? {
            let tenant = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(
                HTTPRouting(routes: [HTTPRoute(cluster: "backend")], clusters: ["backend": cluster])))
            return #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [tenant]).validate() }
        }
        #expect(clusterError(HTTPCluster(endpoints: []))?.field == "http.clusters.backend")
        var both = HTTPCluster.originalDestination()
        both.endpoints = [Endpoint(loopback, port: 17_166)]
        #expect(clusterError(both)?.field == "http.clusters.backend.endpoints")
        let passthrough = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(
            HTTPRouting(routes: [HTTPRoute(cluster: "backend")], clusters: ["backend": .originalDestination()])))
        #expect(throws: Never.self) { try ProxyConfiguration(tenants: [passthrough]).validate() }
        let rated = TenantConfiguration(name: "stream", listener: Endpoint(loopback, port: 17_062), limits: TenantLimits(requestsPerSecond: 10))
        let rateError = #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [rated]).validate() }
        #expect(rateError?.field == "limits.requestsPerSecond", "a request rate on a TCP tenant")
    }

    @Test("header names that routes, authorization rules and hash balancing read must be lowercase field names: anything else is refused with its field")
    func headerNamesChecked() {
        let backend = ["backend": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_166)])]
        func error(_ routing: HTTPRouting) -> ProxyConfigurationError? {
            let tenant = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(routing))
            return #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [tenant]).validate() }
        }
        let route = error(HTTPRouting(routes: [HTTPRoute(cluster: "backend"), HTTPRoute(headers: ["X-Canary": "yes"], cluster: "backend")],
                                      clusters: backend))
        #expect(route?.field == "http.routes[1].headers" && route?.reason.contains("'X-Canary'") == true, "\(String(describing: route))")
        let rule = error(HTTPRouting(routes: [HTTPRoute(cluster: "backend")], clusters: backend,
                                     authorization: HTTPAuthorization(rules: [HTTPAuthorizationRule(.allow, headers: ["x role": "admin"])])))
        #expect(rule?.field == "http.authorization.rules[0].headers")
        let hashed = error(HTTPRouting(routes: [HTTPRoute(cluster: "backend")],
                                       clusters: ["backend": HTTPCluster(endpoints: [Endpoint(loopback, port: 17_166)],
                                                                         balancing: .consistentHash(.header("X-User")))]))
        #expect(hashed?.field == "http.clusters.backend.balancing")
        let fine = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_062), mode: .http(
            HTTPRouting(routes: [HTTPRoute(headers: ["x-canary": "yes"], cluster: "backend")], clusters: backend)))
        #expect(throws: Never.self) { try ProxyConfiguration(tenants: [fine]).validate() }
    }
}
