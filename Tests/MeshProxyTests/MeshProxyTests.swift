import Foundation
import Logging
import MeshKernel
import MeshProxy
import MeshTelemetry
import MeshTelemetryPrometheus
import MeshTestSupport
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization
import Testing


extension HTTPRouting {
    /// Every request to one cluster whose only endpoint is 127.0.0.1:`port`.
    static func everything(toLoopbackPort port: UInt16, tls: UpstreamTLS? = nil, responseTimeout: Duration = .seconds(30),
                           authorization: HTTPAuthorization? = nil) -> HTTPRouting {
        HTTPRouting(routes: [HTTPRoute(cluster: "backend")],
                    clusters: ["backend": HTTPCluster(endpoints: [Endpoint(.loopback, port: port)], tls: tls)],
                    responseTimeout: responseTimeout, authorization: authorization)
    }
}

/// A proxy running in this process until `body` returns, then shut down gracefully.
func withProxy<R: Sendable>(_ configuration: ProxyConfiguration, group: (any EventLoopGroup)? = nil, metrics: PrometheusCollectorRegistry? = nil,
                           logger: Logger = Logger(label: "test-proxy"), _ body: (MeshProxy) async throws -> R) async throws -> R {
    let proxy = try MeshProxy(configuration: configuration, group: group, logger: logger,
                              metrics: metrics.map { MeshPrometheusFactory(registry: $0) })
    let services = ServiceGroup(configuration: .init(services: [proxy], logger: Logger(label: "test-proxy")))
    let running = Task { try await services.run() }
    defer { running.cancel() }
    let names = configuration.tenants.map(\.name)
    #expect(await eventually(timeout: .seconds(60)) { names.allSatisfy { proxy.statistics($0) != nil } }, "the listeners did not come up")
    do {
        let result = try await body(proxy)
        await services.triggerGracefulShutdown()
        try await running.value
        return result
    } catch {
        await services.triggerGracefulShutdown()
        _ = try? await running.value
        throw error
    }
}

private let loopback = IPAddress.loopback

@Suite("MeshProxy over real sockets", .serialized)
struct MeshProxyTests {
    @Test("L4 splice: bytes both ways, half-close carried across; a tenant's connection limit refuses only that tenant's extra connections; an unreachable upstream is counted")
    func spliceAndLimits() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17101"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17101"], timeout: .seconds(10)))
        let upstream = Endpoint(loopback, port: 17_101)
        let configuration = ProxyConfiguration(tenants: [
            TenantConfiguration(name: "alpha", listener: Endpoint(loopback, port: 17_001), upstream: .fixed(upstream),
                                limits: TenantLimits(maxConnections: 2)),
            TenantConfiguration(name: "beta", listener: Endpoint(loopback, port: 17_002), upstream: .fixed(upstream)),
            TenantConfiguration(name: "gamma", listener: Endpoint(loopback, port: 17_003), upstream: .fixed(Endpoint(loopback, port: 17_199))),
        ])
        let registry = PrometheusCollectorRegistry()
        try await withProxy(configuration, metrics: registry) { proxy in
            let result = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17001", "1000000"]).check() }
            #expect(result.output == "ok\n", "\(result.output) \(result.error)")
            #expect(proxy.statistics("alpha")?.bytesFromClients == 1_000_000)
            #expect(proxy.statistics("alpha")?.bytesFromUpstreams == 1_000_003)

            // Two held connections fill alpha; a third is refused, beta is unaffected.
            let go = try GoSignal()
            defer { go.remove() }
            let holders = try (0..<2).map { _ in try Background(["python3", "-c", holdingClient, "127.0.0.1", "17001", go.path]) }
            defer { for holder in holders { holder.stop() } }
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("alpha")?.activeConnections == 2 })
            // The global gauges: three tenants, the two held connections as exchanges, nobody waiting.
            let during = registry.emitToString()
            #expect(during.contains("mesh_proxy_tenants 3") && during.contains("mesh_proxy_exchanges_in_flight 2")
                    && during.contains("mesh_proxy_exchanges_waiting 0"), "\(during)")
            let refused = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17001", "10"]) }
            #expect(refused.output != "ok\n", "a third connection got through a limit of 2")
            #expect(await eventually { proxy.statistics("alpha")?.refusedConnections == 1 })
            let other = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17002", "1000"]).check() }
            #expect(other.output == "ok\n", "tenant beta suffered from alpha's limit")
            #expect(go.give())
            #expect(await holders.finish() == ["connected\nok\n", "connected\nok\n"])

            // Nothing listens behind gamma.
            let unreachable = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17003", "10"]) }
            #expect(unreachable.output != "ok\n")
            #expect(await eventually { proxy.statistics("gamma")?.upstreamFailures == 1 })
            // The same numbers, per tenant, through swift-metrics.
            let exposition = registry.emitToString()
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="alpha",outcome="refused_limit"} 1"#), "\(exposition)")
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="gamma",outcome="upstream_failed"} 1"#))
            let fromClients = proxy.statistics("alpha")?.bytesFromClients ?? -1
            #expect(fromClients == 1_000_020, "1 MB, then 2 held connections of hello + world")
            #expect(exposition.contains(#"mesh_proxy_bytes_total{tenant="alpha",direction="from_client"} \#(fromClients)"#))
            #expect(await eventually { registry.emitToString().contains("mesh_proxy_exchanges_in_flight 0") })
        }
    }

    @Test("a connection silent in both directions for its tenant's idle timeout is closed; one that keeps talking is not")
    func idleTimeout() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17108"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17108"]))
        let tenant = TenantConfiguration(name: "idle", listener: Endpoint(loopback, port: 17_004), upstream: .fixed(Endpoint(loopback, port: 17_108)),
                                         idleTimeout: .seconds(1))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let probe = try await offload { try run(["python3", "-c", idleProbeClient, "127.0.0.1", "17004"]).check().output }
            let lines = probe.split(separator: "\n")
            #expect(lines.first == "alive", "\(probe)")
            let seconds = lines.last.flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
            #expect(lines.last?.hasPrefix("closed") == true && (0.7...3).contains(seconds), "\(probe)")
            #expect(await eventually { proxy.statistics("idle")?.activeConnections == 0 })
        }
    }

    @Test("live reconfiguration: a bad configuration changes nothing; adding, moving and removing tenants leaves other tenants' open connections alone")
    func liveApply() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17102"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17102"], timeout: .seconds(10)))
        let upstream = Endpoint(loopback, port: 17_102)
        let alpha = TenantConfiguration(name: "alpha", listener: Endpoint(loopback, port: 17_011), upstream: .fixed(upstream))
        let beta = TenantConfiguration(name: "beta", listener: Endpoint(loopback, port: 17_012), upstream: .fixed(upstream))
        try await withProxy(ProxyConfiguration(tenants: [alpha, beta])) { proxy in
            let go = try GoSignal()
            defer { go.remove() }
            let held = try Background(["python3", "-c", holdingClient, "127.0.0.1", "17012", go.path])
            defer { held.stop() }
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("beta")?.activeConnections == 1 })

            // Invalid: two tenants on one listener. Refused, and nothing changed.
            var clash = beta
            clash.name = "gamma"
            await #expect(throws: ProxyConfigurationError.self) { try await proxy.apply(ProxyConfiguration(tenants: [alpha, beta, clash])) }
            // A port that cannot be bound (another process holds it) for a new tenant, after one
            // that can and beta moved and tightened: refused, the new listeners are closed again, nothing changed.
            let squatter = try Background(["python3", "-c", portSquatter, "17019"])
            defer { squatter.stop() }
            #expect(try await awaitListeners(["127.0.0.1:17019"], timeout: .seconds(10)))
            let fine = TenantConfiguration(name: "epsilon", listener: Endpoint(loopback, port: 17_018), upstream: .fixed(upstream))
            let taken = TenantConfiguration(name: "delta", listener: Endpoint(loopback, port: 17_019), upstream: .fixed(upstream))
            var movedBeta = beta
            movedBeta.listener = Endpoint(loopback, port: 17_235)
            movedBeta.limits.maxConnections = 1
            let bindError = await #expect(throws: ProxyConfigurationError.self) {
                try await proxy.apply(ProxyConfiguration(tenants: [alpha, movedBeta, fine, taken]))
            }
            #expect(bindError?.tenant == "delta" && bindError?.field == "listener")
            #expect(proxy.statistics("alpha") != nil && proxy.statistics("delta") == nil && proxy.statistics("epsilon") == nil)
            #expect(try await awaitListeners(["127.0.0.1:17018", "127.0.0.1:17235"], listening: false),
                    "a listener bound before the failure was left open")
            let besideHeld = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17012", "10"]) }
            #expect(besideHeld.output == "ok\n", "the failed configuration's limit of one connection reached beta: \(besideHeld.output)")

            // Remove alpha, move nothing else, add delta, tighten beta: beta's open connection runs on.
            var tightened = beta
            tightened.limits.maxConnections = 1
            let delta = TenantConfiguration(name: "delta", listener: Endpoint(loopback, port: 17_013), upstream: .fixed(upstream))
            try await proxy.apply(ProxyConfiguration(tenants: [tightened, delta]))
            #expect(proxy.statistics("alpha") == nil)
            let viaDelta = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17013", "1000"]).check() }
            #expect(viaDelta.output == "ok\n")
            let viaAlpha = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17011", "10"]) }
            #expect(viaAlpha.output != "ok\n", "alpha's listener still accepted after its removal")
            // Beta's new limit applies to new connections: it has one open, so another is refused.
            let second = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17012", "10"]) }
            #expect(second.output != "ok\n")
            #expect(go.give())
            #expect(await held.finish() == "connected\nok\n", "beta's open connection was disturbed by the change")
        }
    }

    @Test("a tenant with several listeners serves each under its one limit; a change that adds one and removes another leaves the connections through both alone, the removed port refuses and the added one serves; a listener listed twice, or another tenant's (in the configuration, or still in the running one), is refused with its field")
    func severalListeners() async throws {
        let echo = try await startServer(echoServer, named: "echoServer", port: 17_254)
        defer { echo.stop() }
        let upstream = Endpoint(loopback, port: 17_254)
        let (first, second, third) = (Endpoint(loopback, port: 17_251), Endpoint(loopback, port: 17_252), Endpoint(loopback, port: 17_253))
        let tenant = TenantConfiguration(name: "multi", listener: first, upstream: .fixed(upstream), limits: TenantLimits(maxConnections: 2),
                                         additionalListeners: [second])
        var twice = tenant
        twice.additionalListeners = [second, second]
        let twiceError = #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [twice]).validate() }
        #expect(twiceError?.field == "additionalListeners[1]" && twiceError?.reason.contains("listed twice") == true, "\(String(describing: twiceError))")
        let other = TenantConfiguration(name: "other", listener: second, upstream: .fixed(upstream))
        let clash = #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [tenant, other]).validate() }
        #expect(clash?.tenant == "other" && clash?.field == "listener" && clash?.reason.contains("tenant multi's") == true, "\(String(describing: clash))")

        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let go = try GoSignal()
            defer { go.remove() }
            let held = try [first, second].map { try Background(["python3", "-c", holdingClient, "127.0.0.1", "\($0.port)", go.path]) }
            defer { for client in held { client.stop() } }
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("multi")?.activeConnections == 2 })
            func echoes(through listener: Endpoint) async throws -> Bool {
                try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "\(listener.port)", "100"]).output == "ok\n" }
            }
            // One limit for the tenant, whichever listener: a third connection is refused.
            #expect(try await !echoes(through: first), "the tenant's limit of two was per listener")

            var changed = tenant
            changed.additionalListeners = [third]
            // Handed to another tenant in the same apply: refused, for it is still this one's until the apply.
            let taker = TenantConfiguration(name: "taker", listener: second, upstream: .fixed(upstream))
            let handOver = await #expect(throws: ProxyConfigurationError.self) { try await proxy.apply(ProxyConfiguration(tenants: [changed, taker])) }
            #expect(handOver?.tenant == "taker" && handOver?.reason.contains("still tenant multi's") == true, "\(String(describing: handOver))")
            try await proxy.apply(ProxyConfiguration(tenants: [changed]))
            #expect(try await awaitListeners(["127.0.0.1:17252"], listening: false), "the removed listener still listens")
            #expect(go.give())
            #expect(await held.finish() == ["connected\nok\n", "connected\nok\n"], "a connection was disturbed by the change of listeners")
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("multi")?.activeConnections == 0 })
            #expect(try await echoes(through: third), "the added listener does not serve")
            #expect(try await echoes(through: first), "the kept listener stopped serving")
            #expect(try await !echoes(through: second), "the removed listener still serves")
        }
    }

    @Test("rate limits: a tenant over its connection rate is refused and one over its bandwidth waits, while another tenant is untouched")
    func rateLimits() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17104"])
        defer { echo.stop() }
        let sink = try Background(["python3", "-c", sinkServer, "17107", "\(2 << 20)"])
        defer { sink.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17104", "127.0.0.1:17107"]))
        let upstream = Endpoint(loopback, port: 17_104)
        let configuration = ProxyConfiguration(tenants: [
            TenantConfiguration(name: "bursty", listener: Endpoint(loopback, port: 17_031), upstream: .fixed(upstream),
                                limits: TenantLimits(connectionsPerSecond: 3)),
            TenantConfiguration(name: "bulky", listener: Endpoint(loopback, port: 17_032), upstream: .fixed(Endpoint(loopback, port: 17_107)),
                                limits: TenantLimits(bytesPerSecond: 1 << 20)),
            TenantConfiguration(name: "calm", listener: Endpoint(loopback, port: 17_033), upstream: .fixed(upstream)),
        ])
        try await withProxy(configuration) { proxy in
            // Ten connections back to back: at most the burst (3) plus 3 a second get through.
            let burst = try await offload { try run(["python3", "-c", connectionBurst, "127.0.0.1", "17031", "10"]).check().output }
            let fields = burst.split(separator: " ")
            let accepted = Int(fields[0]) ?? -1, seconds = Double(fields[1].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 99
            #expect(accepted >= 3 && Double(accepted) <= 3 + 3 * seconds + 1, "\(accepted) accepted in \(seconds) s")
            #expect(await eventually { proxy.statistics("bursty")?.rateLimitedConnections == 10 - accepted })
            let calm = try await offload { try run(["python3", "-c", connectionBurst, "127.0.0.1", "17033", "10"]).check().output }
            #expect(calm.hasPrefix("10 "), "the calm tenant was limited too: \(calm)")

            // 2 MiB one way at 1 MiB/s with a 1 MiB burst, and no end-of-stream (at
            // which NIO reads whatever the socket holds at once): the transfer cannot
            // take less than (2 MiB - 1 MiB - one 16 KiB read) / 1 MiB/s.
            let bulk = try await offload { try run(["python3", "-c", sinkClient, "127.0.0.1", "17032", "\(2 << 20)"]).check().output }
            #expect(bulk.hasPrefix("done "), "\(bulk)")
            let bulkSeconds = Double(bulk.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
            #expect(bulkSeconds >= 0.8, "2 MiB crossed a 1 MiB/s tenant in \(bulkSeconds) s: \(String(describing: proxy.statistics("bulky")))")
            #expect((proxy.statistics("bulky")?.throttledReads ?? 0) > 0)
            let free = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17033", "\(1 << 20)", "timed"]).check().output }
            #expect(free.hasPrefix("ok "))
        }
    }

    @Test("a half-close reaches a slow reader only after everything written before it: no response is cut short (on the tenant's splice loop, and on a shared group's)",
          arguments: [false, true])
    func halfCloseAfterPendingWrites(sharedGroup: Bool) async throws {
        let size = 4 << 20
        let port: UInt16 = sharedGroup ? 17_169 : 17_105
        let bulk = try Background(["python3", "-c", bulkServer, "\(port)", "\(size)"])
        defer { bulk.stop() }
        #expect(try await awaitListeners(["127.0.0.1:\(port)"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "bulk", listener: Endpoint(loopback, port: sharedGroup ? 17_044 : 17_041),
                                         upstream: .fixed(Endpoint(loopback, port: port)), limits: TenantLimits(maxBufferedBytes: 65_536))
        let group = sharedGroup ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: [tenant]), group: group) { proxy in
            let received = try await offload { try run(["python3", "-c", slowReader, "127.0.0.1", "\(tenant.listener.port)"]).check().output }
            #expect(received == "\(size)\n", "the upstream's close cut the response short")
        }
    }

    @Test("what a client sends with its half-close while the upstream connect is still pending reaches the upstream (on the tenant's splice loop, and on a shared group's)",
          arguments: [false, true])
    func inputBeforeUpstreamConnects(sharedGroup: Bool) async throws {
        let port: UInt16 = sharedGroup ? 17_165 : 17_164
        let server = try Background(["python3", "-c", lateAcceptingEchoServer, "\(port)"])
        defer { server.stop() }
        #expect(try await awaitListeners(["127.0.0.1:\(port)"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "early", listener: Endpoint(loopback, port: sharedGroup ? 17_043 : 17_042),
                                         upstream: .fixed(Endpoint(loopback, port: port)))
        let group = sharedGroup ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: [tenant]), group: group) { proxy in
            // The proxy reads the client's bytes and end while its connect waits for the SYN's retry.
            let echoed = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "\(tenant.listener.port)", "1000"]).check().output }
            #expect(echoed == "ok\n", "the client's bytes were lost before the upstream connected")
            #expect(proxy.statistics("early")?.bytesFromClients == 1_000)
        }
    }

    @Test("a connection made to a new listener of a configuration that then fails is never served: the listener accepts nothing until the configuration has applied")
    func failedApplyServesNothing() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17238"])
        defer { echo.stop() }
        let squatter = try Background(["python3", "-c", portSquatter, "17240"])
        defer { squatter.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17238", "127.0.0.1:17240"], timeout: .seconds(10)))
        let upstream = Endpoint(loopback, port: 17_238)
        let kept = TenantConfiguration(name: "kept", listener: Endpoint(loopback, port: 17_241), upstream: .fixed(upstream))
        let fleeting = TenantConfiguration(name: "fleeting", listener: Endpoint(loopback, port: 17_239), upstream: .fixed(upstream))
        let taken = TenantConfiguration(name: "taken", listener: Endpoint(loopback, port: 17_240), upstream: .fixed(upstream))
        try await withProxy(ProxyConfiguration(tenants: [kept])) { proxy in
            // A prober knocks on the fleeting listener's port while configurations that bind it, then fail, are applied.
            let stop = try GoSignal()
            defer { stop.remove() }
            let ready = stop.path + ".ready"
            let prober = try Background(["python3", "-c", echoProber, "17239", stop.path, ready])
            defer { prober.stop() }
            #expect(await eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: ready) })
            for _ in 0..<200 {
                await #expect(throws: ProxyConfigurationError.self) { try await proxy.apply(ProxyConfiguration(tenants: [kept, fleeting, taken])) }
            }
            #expect(stop.give())
            #expect(await prober.finish() == "0\n", "connections to a listener of a failed configuration were served")
            #expect(proxy.statistics("fleeting") == nil)
        }
    }

    @Test("configurations applied while the proxy starts never stop it: the one stored while it bound its listeners is applied, or a later one")
    func appliesWhileStarting() async throws {
        let upstream = Endpoint(loopback, port: 9)   // (never connected to)
        let configurations = (0..<2).map { index in
            ProxyConfiguration(tenants: [TenantConfiguration(name: "start", listener: Endpoint(loopback, port: 17_242), upstream: .fixed(upstream),
                                                             limits: TenantLimits(maxConnections: 10 + index))])
        }
        for round in 0..<12 {
            let proxy = try MeshProxy(configuration: configurations[0], logger: Logger(label: "test"))
            let running = Task { try await proxy.run() }
            // Applies as fast as they are taken, from before the listeners are bound until well after.
            var applied = 0
            let clock = ContinuousClock(), end = clock.now + .milliseconds(300)
            while clock.now < end {
                do {
                    try await proxy.apply(configurations[1 - applied % 2])
                    applied += 1
                } catch {
                    // Only "another apply is in progress" is expected: retried.
                    #expect(error.reason.contains("another apply"), "round \(round): \(error)")
                    if !error.reason.contains("another apply") { break }
                    await Task.yield()
                }
            }
            // Serving (a loaded machine may take longer than the applies did to start it), and then it stays.
            let serving = await eventually(timeout: .seconds(30)) { proxy.statistics("start") != nil }
            let stoppedItself = await eventually(timeout: .milliseconds(200)) { proxy.statistics("start") == nil }
            running.cancel()
            let outcome = await running.result
            #expect(serving && !stoppedItself, "round \(round): the proxy stopped itself while starting: \(outcome)")
            if case .failure(let error) = outcome { Issue.record("round \(round): run() threw \(error)") }
            #expect(try await awaitListeners(["127.0.0.1:17242"], listening: false))
        }
    }

    @Test("cancelling the proxy closes open connections at once instead of waiting out the drain")
    func cancellationEndsDrain() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17106"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17106"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "alpha", listener: Endpoint(loopback, port: 17_051), upstream: .fixed(Endpoint(loopback, port: 17_106)))
        let proxy = try MeshProxy(configuration: ProxyConfiguration(tenants: [tenant], drainTimeout: .seconds(60)), logger: Logger(label: "test"))
        let running = Task { try await proxy.run() }
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("alpha") != nil })
        let never = try GoSignal()   // never given: the client stays until the proxy closes it
        defer { never.remove() }
        let held = try Background(["python3", "-c", holdingClient, "127.0.0.1", "17051", never.path])
        defer { held.stop() }
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("alpha")?.activeConnections == 1 })
        let clock = ContinuousClock()
        let start = clock.now
        running.cancel()
        _ = try? await running.value
        #expect(clock.now - start < .seconds(10), "cancellation waited out the 60 s drain")
        #expect(await eventually(timeout: .seconds(5)) { proxy.statistics("alpha")?.activeConnections == 0 })
        // The proxy has stopped: it takes no new configuration.
        await #expect(throws: ProxyConfigurationError.self) { try await proxy.apply(ProxyConfiguration(tenants: [tenant])) }
    }

    @Test("graceful shutdown stops accepting at once and lets open connections finish")
    func gracefulDrain() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17103"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17103"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "alpha", listener: Endpoint(loopback, port: 17_021), upstream: .fixed(Endpoint(loopback, port: 17_103)))
        let proxy = try MeshProxy(configuration: ProxyConfiguration(tenants: [tenant], drainTimeout: .seconds(20)), logger: Logger(label: "test"))
        let group = ServiceGroup(configuration: .init(services: [proxy], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        defer { running.cancel() }
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("alpha") != nil })
        let go = try GoSignal()
        defer { go.remove() }
        let held = try Background(["python3", "-c", holdingClient, "127.0.0.1", "17021", go.path])
        defer { held.stop() }
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("alpha")?.activeConnections == 1 })
        await group.triggerGracefulShutdown()
        #expect(try await awaitListeners(["127.0.0.1:17021"], listening: false, timeout: .seconds(5)),
                "the listener stayed open during the drain")
        #expect(go.give())
        try await running.value
        // The proxy is done once it has written the last bytes; the client may still be reading them.
        #expect(await held.finish() == "connected\nok\n", "the open connection did not finish during the drain")
    }

    @Test("the mesh-proxy program's --tenants file, read again on SIGHUP: a tenant added, one moved to another upstream and one removed apply live while a connection through a tenant that stays goes on; a file with a bad line, or none, is logged with where, and the running tenants stay")
    func tenantsFileReloaded() async throws {
        let echo = try await startServer(echoServer, named: "echoServer", port: 17_264)
        defer { echo.stop() }
        let named = try await startNamedHTTPServer(port: 17_265, name: "N")
        defer { named.stop() }
        try await withTemporaryDirectory("tenants") { directory in
            let file = directory.appendingPathComponent("tenants").path, log = directory.appendingPathComponent("log").path
            func write(_ lines: [String]) throws { try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8) }
            func logged() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
            try write(["# tenants of this node", "stay=127.0.0.1:17262,upstream=127.0.0.1:17264", "",
                       "moves=127.0.0.1:17263,upstream=127.0.0.1:17264", "gone=127.0.0.1:17267,upstream=127.0.0.1:17264"])
            let proxy = try Background(["sh", "-c", "exec \(meshProxyProgram) --metrics 127.0.0.1:17266 --tenants \(file) > \(log) 2>&1"])
            defer { proxy.stop() }
            #expect(try await awaitListeners(["127.0.0.1:17262", "127.0.0.1:17263", "127.0.0.1:17267", "127.0.0.1:17266"]), "\(logged())")
            func echoes(through port: Int) async throws -> Bool {
                try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", String(port), "1000"]).output == "ok\n" }
            }
            #expect(try await echoes(through: 17_263))

            // A connection through a tenant that stays, held across every reload below.
            let go = try GoSignal()
            defer { go.remove() }
            let holder = try Background(["python3", "-c", holdingClient, "127.0.0.1", "17262", go.path])
            defer { holder.stop() }
            #expect(await eventually(timeout: .seconds(10)) {
                (try? run(["curl", "-s", "http://127.0.0.1:17266/metrics"]).output)?.contains(#"mesh_proxy_connections_active{tenant="stay"} 1"#) == true
            }, "the held connection never became active")

            try write(["stay=127.0.0.1:17262,upstream=127.0.0.1:17264", "moves=127.0.0.1:17263,upstream=127.0.0.1:17265",
                       "new=127.0.0.1:17268,upstream=127.0.0.1:17264"])
            kill(proxy.pid, SIGHUP)
            #expect(try await awaitListeners(["127.0.0.1:17268"]), "\(logged())")
            #expect(try await awaitListeners(["127.0.0.1:17267"], listening: false), "the removed tenant's listener is still open")
            #expect(try await echoes(through: 17_268))
            let moved = try await offload { try run(["curl", "-s", "--max-time", "5", "http://127.0.0.1:17263/x"]).output }
            #expect(moved == "N /x 0", "the moved tenant's new upstream did not answer: \(moved)")

            // A bad line: nothing changes, and the log says where.
            try write(["stay=127.0.0.1:17262,upstream=127.0.0.1:17264", "broken=127.0.0.1:17269,mode=ftp"])
            kill(proxy.pid, SIGHUP)
            #expect(await eventually(timeout: .seconds(10)) { logged().contains("tenants not applied") && logged().contains("\(file):2") }, "\(logged())")
            #expect(try await echoes(through: 17_268), "a tenant went with a configuration that was refused")
            // Lines that parse but make a configuration the proxy refuses (a listener twice): nothing changes, not
            // even the tenant the file adds.
            try write(["stay=127.0.0.1:17262,upstream=127.0.0.1:17264", "twin=127.0.0.1:17262,upstream=127.0.0.1:17264",
                       "late=127.0.0.1:17269,upstream=127.0.0.1:17264"])
            kill(proxy.pid, SIGHUP)
            #expect(await eventually(timeout: .seconds(10)) { logged().components(separatedBy: "tenants not applied").count == 3 }, "\(logged())")
            #expect(logged().contains("already tenant stay's"), "\(logged())")
            #expect(try await awaitListeners(["127.0.0.1:17269"], listening: false), "a tenant of a refused configuration was bound")
            #expect(try await echoes(through: 17_268), "a tenant went with a configuration that was refused")
            // No file: likewise.
            try FileManager.default.removeItem(atPath: file)
            kill(proxy.pid, SIGHUP)
            #expect(await eventually(timeout: .seconds(10)) { logged().contains("cannot read \(file)") }, "\(logged())")
            #expect(try await echoes(through: 17_268))

            #expect(go.give())
            #expect(await holder.finish() == "connected\nok\n", "the held connection through the tenant that stayed broke")
            #expect(await proxy.terminate() == 0, "\(logged())")
        }
    }
}

@Suite("MeshProxy behind the kernel redirect", .kernel, .serialized)
struct MeshProxyRedirectTests {
    @Test("HTTP authorization by the identity the datapath recorded for the connecting workload: each workload gets what its rules allow, 403 otherwise; every request is in MeshTelemetry's metrics by source and destination workload, reporter proxy, and in its traces and flow log with its tenant; a second tenant added live gets its own workload's connections, with its own routing; a third, whose cluster is the original destination, sends its workload's requests where they were going", .alone)
    func authorizationByWorkloadIdentity() async throws {
        // Loopback only: the redirect applies to this test's own cgroups, and the original destination is 127.0.0.1.
        let backend = try await startNamedHTTPServer(port: 17126, name: "B")
        defer { backend.stop() }
        try await withLoopbackMesh("meshauthz", workloads: [("frontend", 7, 700), ("batch", 7, 701)], calling: 17_126, through: 17_076) { mesh in
            let (frontend, batch, proxyGroup, redirect) = (mesh.workloads[0], mesh.workloads[1], mesh.proxy, mesh.redirect)

            let authorization = HTTPAuthorization(rules: [
                HTTPAuthorizationRule(.allow, sources: [.workload(700)], methods: ["GET"], pathPrefix: "/api"),
                HTTPAuthorizationRule(.allow, sources: [.workload(701)], methods: ["GET"], pathPrefix: "/reports"),
            ])
            let routing = HTTPRouting.everything(toLoopbackPort: 17_126, authorization: authorization)
            let tenant = TenantConfiguration(name: "seven", listener: Endpoint(loopback, port: 17_076), mode: .http(routing))
            let registry = PrometheusCollectorRegistry()
            let backendEndpoint = Endpoint(loopback, port: 17_126)
            let tracer = W3CInMemoryTracer()
            let logged = Mutex<[String]>([])
            let flowLog = FlowLog(workloadName: { [700: "frontend", 701: "batch"][$0] }) { line in logged.withLock { $0.append(line) } }
            let exchanges = HTTPMetrics(factory: MeshPrometheusFactory(registry: registry),
                                        workloadName: { [700: "frontend", 701: "batch"][$0] ?? "identity-\($0)" },
                                        peerWorkload: { $0 == backendEndpoint ? "backend" : nil })
            let proxy = try MeshProxy(configuration: ProxyConfiguration(tenants: [tenant]), originalDestinations: .datapath(redirect),
                                      logger: Logger(label: "test-proxy"), exchanges: [exchanges, flowLog, HTTPTracing(tracer: tracer)])
            try await serve(proxy, listeningOn: ["127.0.0.1:17076"], in: proxyGroup) {

                func curl(_ workload: Cgroup, _ arguments: String) async throws -> String {
                    try await offload { try runInCgroup(workload.path, "curl -s --max-time 5 -w ' %{http_code}' \(arguments)").check().output }
            }
            // The workloads call the backend's own address; the datapath takes them to the proxy.
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736", parentID = "00f067aa0ba902b7"
            #expect(try await curl(frontend, "-H 'traceparent: 00-\(traceID)-\(parentID)-01' http://127.0.0.1:17126/api/items") == "B /api/items 0 200")
            let frontendPost = try await curl(frontend, "-X POST -d x http://127.0.0.1:17126/api/items")
            #expect(frontendPost.hasSuffix(" 403") && frontendPost.contains("workload 700 may not POST /api/items"), "\(frontendPost)")
            #expect(try await curl(frontend, "http://127.0.0.1:17126/reports/q1").hasSuffix(" 403"))
            #expect(try await curl(batch, "http://127.0.0.1:17126/reports/q1") == "B /reports/q1 0 200")
            let batchAPI = try await curl(batch, "http://127.0.0.1:17126/api/items")
            #expect(batchAPI.hasSuffix(" 403") && batchAPI.contains("workload 701 may not GET /api/items"), "\(batchAPI)")
            #expect(proxy.statistics("seven")?.forbiddenRequests == 3)
            #expect(try redirect.counters().redirected == 5)

            // The same five requests through MeshTelemetry's names: exact counts, valid exposition.
            let exposition = registry.emitToString()
            for (source, method, status, count) in [("frontend", "GET", 200, 1), ("frontend", "POST", 403, 1), ("frontend", "GET", 403, 1),
                                                    ("batch", "GET", 200, 1), ("batch", "GET", 403, 1)] {
                let series = #"mesh_http_requests_total{source_workload="\#(source)",destination_workload="backend",http_request_method="\#(method)","#
                    + #"http_response_status_code="\#(status)",reporter="proxy",tenant="seven"} \#(count)"#
                #expect(exposition.contains(series), "\(series)\n\(exposition)")
            }
            #expect(exposition.contains(#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",server_address="127.0.0.1",network_protocol_version="1.1"} 2"#),
                    "\(exposition)")
            let promtool = try await offload { try run(["promtool", "check", "metrics"], input: exposition) }
            #expect(promtool.status == 0, "promtool: \(promtool.output) \(promtool.error)")
            // And in the flow log: one line per request, the proxy as reporter, the workload by name.
            let lines = logged.withLock { $0 }
            #expect(lines.count == 5 && lines.allSatisfy { $0.contains(#""reporter":"proxy","tenant":"seven""#) }, "\(lines)")
            #expect(lines.filter { $0.contains(#""upstream":"127.0.0.1:17126""#) }.count == 2, "the two requests the backend answered: \(lines)")
            #expect(lines.filter { $0.contains(#""workload":"batch""#) && $0.contains(#""status":403"#) }.count == 1, "\(lines)")
            // And as spans: one per request, server kind; the request that carried a traceparent joins its trace.
            let spans = tracer.recorder.finishedSpans
            #expect(spans.count == 5 && spans.allSatisfy { $0.kind == .server && $0.attributes.get("mesh.tenant") == .string("seven") })
            let joined = spans.filter { $0.traceID == traceID }
            #expect(joined.count == 1 && joined.first?.parentSpanID == parentID && joined.first?.attributes.get("http.response.status_code") == .int64(200))

            // A second tenant, added live: its workload's calls to the same address land in its own
            // listener and follow its own routing (another backend) and rules (none: all allowed).
            let other = try await startNamedHTTPServer(port: 17127, name: "E")
            defer { other.stop() }
            let ops = try mesh.addWorkload("ops", tenant: 8, identity: 800, calling: 17_126, through: 17_077)
            defer { try? ops.remove() }
            let eight = TenantConfiguration(name: "eight", listener: Endpoint(loopback, port: 17_077), mode: .http(.everything(toLoopbackPort: 17_127)))
            try await proxyGroup.withCurrentProcess { try await proxy.apply(ProxyConfiguration(tenants: [tenant, eight])) }
            #expect(try await curl(ops, "http://127.0.0.1:17126/api/items") == "E /api/items 0 200")
            #expect(try await curl(frontend, "http://127.0.0.1:17126/api/items") == "B /api/items 0 200")
            #expect(proxy.statistics("eight")?.requestsRouted == 1 && proxy.statistics("seven")?.forbiddenRequests == 3)
            #expect(try redirect.counters().redirected == 7)

            // A third, whose cluster is the original destination: its requests go where its workload
            // called, which the datapath's record tells this proxy (no getsockopt).
            let called = try await startNamedHTTPServer(port: 17_243, name: "D")
            defer { called.stop() }
            let jobs = try mesh.addWorkload("jobs", tenant: 9, identity: 900, calling: 17_243, through: 17_244)
            defer { try? jobs.remove() }
            let nine = TenantConfiguration(name: "nine", listener: Endpoint(loopback, port: 17_244), mode: .http(
                HTTPRouting(routes: [HTTPRoute(cluster: "called")], clusters: ["called": .originalDestination()])))
            try await proxyGroup.withCurrentProcess { try await proxy.apply(ProxyConfiguration(tenants: [tenant, eight, nine])) }
            #expect(try await curl(jobs, "http://127.0.0.1:17243/wherever") == "D /wherever 0 200")
            #expect(proxy.statistics("nine")?.requestsRouted == 1)
            #expect(try redirect.counters().redirected == 8)
            }
        }
    }


    @Test("a tenant bound to its datapath tenant refuses at accept, and counts, a connection the datapath recorded as another tenant's workload's, which a rule sent to its listener; its own workload's L4 connection is spliced to where it was going, from the datapath's record", .alone)
    func foreignTenantRefused() async throws {
        let echo = try await startServer(echoServer, named: "echoServer", port: 17_260)
        defer { echo.stop() }
        // Tenant 8's rule names tenant 7's listener: the misconfiguration the binding guards against.
        try await withLoopbackMesh("meshforeign", workloads: [("own", 7, 700), ("foreign", 8, 800)], calling: 17_260, through: 17_261) { mesh in
            let (own, foreign, proxyGroup, redirect) = (mesh.workloads[0], mesh.workloads[1], mesh.proxy, mesh.redirect)
            let listener = Endpoint(loopback, port: 17_261)
            let seven = TenantConfiguration(name: "seven", listener: listener, datapathTenant: 7)
            let proxy = try MeshProxy(configuration: ProxyConfiguration(tenants: [seven]), originalDestinations: .datapath(redirect),
                                      logger: Logger(label: "test-proxy"))
            try await serve(proxy, listeningOn: ["127.0.0.1:17261"], in: proxyGroup) {
                // The other tenant's workload: redirected to this listener, and closed at accept.
                let refused = try await offload { try runInCgroup(foreign.path, "python3 -c '\(echoClient)' 127.0.0.1 17260 10") }
                #expect(!refused.output.hasPrefix("ok"), "the other tenant's workload was served: \(refused.output)")
                let served = try await offload { try runInCgroup(own.path, "python3 -c '\(echoClient)' 127.0.0.1 17260 100000") }
                #expect(served.output == "ok\n", "\(served.output) \(served.error)")
                let statistics = proxy.statistics("seven")
                #expect(statistics?.foreignTenantConnections == 1 && statistics?.acceptedConnections == 1, "\(String(describing: statistics))")
                // Both workloads' connects were redirected; the proxy (this process, outside the mesh's cgroup) connected straight.
                let counters = try redirect.counters()
                #expect(counters.redirected == 2 && counters.recorded == 2, "\(counters)")
            }
        }
    }

    @Test("the mesh-proxy program reads the datapath's records from the pin the agent made (--datapath-pins): each HTTP request is reported by the identity of the workload that made it, and a tenant bound to its datapath tenant refuses another tenant's workload sent to its listener, counted; a folder not made is an error naming it")
    func programReadsPinnedRecords() async throws {
        let backend = try await startNamedHTTPServer(port: 17_270, name: "P")
        defer { backend.stop() }
        try await withLoopbackMesh("meshpins", workloads: [("own", 12, 1_200), ("foreign", 13, 1_300)], calling: 17_270, through: 17_271) { mesh in
            let (own, foreign, proxyGroup, redirect) = (mesh.workloads[0], mesh.workloads[1], mesh.proxy, mesh.redirect)
            try await withPinFolder { folder in
                try redirect.pinRecords(in: folder)
                // A folder the agent has not made: an error that names it, and the program ends.
                let early = try await offload {
                    try run([meshProxyProgram, "--datapath-pins", folder.path + "-not-made", "--tenant", "twelve=127.0.0.1:17271"], timeout: .seconds(30))
                }
                #expect(early.status == 1 && early.error.contains("open pin folder \(folder.path)-not-made failed: not found"), "\(early)")
                let proxy = try Background(cgroupCommand(proxyGroup.path, "\(meshProxyProgram) --datapath-pins \(folder.path) --metrics 127.0.0.1:17272 "
                                                         + "--tenant twelve=127.0.0.1:17271,upstream=127.0.0.1:17270,mode=http,datapath-tenant=12"))
                defer { proxy.stop() }
                #expect(try await awaitListeners(["127.0.0.1:17271", "127.0.0.1:17272"]), "proxy: \(proxy.isRunning ? "" : proxy.stop())")
                func curl(in cgroup: Cgroup) async throws -> String {
                    try await offload { try runInCgroup(cgroup.path, "curl -s --max-time 5 -w ' %{http_code}' http://127.0.0.1:17270/call").output }
                }
                #expect(try await curl(in: own) == "P /call 0 200")
                #expect(try await curl(in: foreign).hasSuffix(" 000"), "the other tenant's workload was served")
                let exposition = try await offload { try run(["curl", "-s", "http://127.0.0.1:17272/metrics"]).check().output }
                #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="twelve",outcome="foreign_tenant"} 1"#), "\(exposition)")
                #expect(exposition.contains(#"mesh_http_requests_total{source_workload="identity-1200",destination_workload="unknown",http_request_method="GET",http_response_status_code="200",reporter="proxy",tenant="twelve"} 1"#),
                        "\(exposition)")
                #expect(await proxy.terminate() == 0)
            }
        }
    }

    @Test("an HTTP tenant without an upstream of its own (the mesh-proxy program, which asks getsockopt) sends each request to where its connection was going: workloads' calls to two service addresses reach each address's own server; a request on a connection that was not redirected is answered 502 with the reason, and counted")
    func httpToOriginalDestination() throws {
        try withServiceAddresses("meshhttpdst", addresses: ["10.96.10.1", "10.96.10.2"], tenant: 10, listener: 15_091) { mesh in
            let servers = try [("10.96.10.1", "A"), ("10.96.10.2", "B")].map { address, name in
                try Background(cgroupCommand(mesh.server.path, namespace: mesh.namespace, "python3 -c '\(namedHTTPServer)' 8080 \(name) \(address)"))
            }
            defer { for server in servers { server.stop() } }
            let proxy = try Background(cgroupCommand(mesh.proxy.path, namespace: mesh.namespace,
                                                     "\(meshProxyProgram) --metrics 127.0.0.1:15092 --tenant ten=127.0.0.1:15091,mode=http"))
            defer { proxy.stop() }
            #expect(try waitForListeners(["10.96.10.1:8080", "10.96.10.2:8080", "127.0.0.1:15091", "127.0.0.1:15092"], in: mesh.namespace))
            func curl(in cgroup: Cgroup, _ urls: String) throws -> String {
                try runInCgroup(cgroup.path, namespace: mesh.namespace, "curl -s --max-time 5 -w ' %{http_code}|' \(urls)").check().output
            }
            // Two requests a connection (curl keeps it): each goes where the workload called.
            #expect(try curl(in: mesh.client, "http://10.96.10.1:8080/one http://10.96.10.1:8080/two") == "A /one 0 200|A /two 0 200|",
                    "proxy: \(proxy.isRunning ? "" : proxy.stop())")
            #expect(try curl(in: mesh.client, "http://10.96.10.2:8080/three") == "B /three 0 200|")
            let counters = try mesh.redirect.counters()
            #expect(counters.redirected == 2 && counters.originalDestinationAnswered == 2, "\(counters)")
            #expect(counters.proxyBypassed == 2, "the proxy's own upstream connections must not be redirected: \(counters)")
            // A client outside the workload's cgroup, straight to the listener: nowhere to go.
            let direct = try curl(in: mesh.server, "http://127.0.0.1:15091/four")
            #expect(direct.hasSuffix(" 502|") && direct.contains("original destination"), "\(direct)")
            let exposition = try run(["ip", "netns", "exec", mesh.namespace, "curl", "-s", "http://127.0.0.1:15092/metrics"]).check().output
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="ten",outcome="no_original_destination"} 1"#), "\(exposition)")
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="ten",outcome="request_routed"} 4"#), "\(exposition)")
            #expect(proxy.terminate() == 0)
        }
    }

    @Test("a workload's connect() is redirected to its tenant's listener; the proxy finds the original destination and splices to it; with acceleration on, both of the proxy's local legs take the sockmap shortcut")
    func redirectedThroughTheProxy() throws {
        try withServiceAddresses("meshproxy", addresses: ["10.96.9.9"], tenant: 9, listener: 15_090) { mesh in
            let (namespace, client, proxyGroup, server, redirect) = (mesh.namespace, mesh.client, mesh.proxy, mesh.server, mesh.redirect)
            // The sockmap shortcut for every local TCP connection of the mesh, the proxy's legs included.
            let acceleration = try SocketAcceleration(cgroup: mesh.cgroup)
            defer { acceleration.detach() }

            let upstream = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(echoServer)' 10.96.9.9 8080"))
            defer { upstream.stop() }
            let proxy = try Background(cgroupCommand(proxyGroup.path, namespace: namespace, "\(meshProxyProgram) --tenant nine=127.0.0.1:15090"))
            defer { proxy.stop() }
            #expect(try waitForListeners(["10.96.9.9:8080", "127.0.0.1:15090"], in: namespace))
            for size in [10, 100_000] {
                let result = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(echoClient)' 10.96.9.9 8080 \(size)").check()
                #expect(result.output == "ok\n", "\(result.output) \(result.error) proxy: \(proxy.isRunning ? "" : proxy.stop())")
            }
            let counters = try redirect.counters()
            #expect(counters.redirected == 2, "\(counters)")
            #expect(counters.originalDestinationAnswered == 2, "the proxy did not get its original destinations from the datapath")
            #expect(counters.proxyBypassed == 2, "the proxy's own upstream connections must not be redirected")
            // Client -> proxy and proxy -> upstream: four local sockets per connection, all in the
            // sockhash, and the bytes of both legs, both ways, crossed socket to socket.
            let accelerated = try acceleration.counters()
            #expect(accelerated.socketsAdded == 8, "\(accelerated)")
            #expect(accelerated.bytesRedirected >= 4 * 100_000, "\(accelerated)")
            // SIGTERM: the proxy drains and exits cleanly.
            #expect(proxy.terminate() == 0)
        }
    }

    @Test("an L4 tenant without an upstream behind a redirect by service: the mesh-proxy program recovers the service address, connects to it, and the datapath's balancer picks a backend for that connection; connections spread over the backends")
    func l4ToBalancedService() throws {
        let backends = [("10.0.12.1", "A"), ("10.0.12.2", "B")]
        try withServiceAddresses("meshl4svc", addresses: backends.map(\.0), tenant: 12, listener: 15_093, redirecting: false) { mesh in
            // Attached after the redirect, so it sees the proxy's connect to the service address, not the workload's.
            let balancer = try ServiceLoadBalancer(attachingTo: mesh.cgroup)
            defer { balancer.detach() }
            let vip = Endpoint(try IPAddress("10.96.12.12"), port: 80)
            try balancer.addService(vip, backends: try backends.map { .init(Endpoint(try IPAddress($0.0), port: 8080)) })
            try mesh.redirect.addRule(tenant: 12, service: vip, of: balancer, proxy: Endpoint(.loopback, port: 15_093))
            let servers = try backends.map { address, name in
                try Background(cgroupCommand(mesh.server.path, namespace: mesh.namespace, "python3 -c '\(namedHTTPServer)' 8080 \(name) \(address)"))
            }
            defer { for server in servers { server.stop() } }
            let proxy = try Background(cgroupCommand(mesh.proxy.path, namespace: mesh.namespace, "\(meshProxyProgram) --tenant twelve=127.0.0.1:15093"))
            defer { proxy.stop() }
            #expect(try waitForListeners(["10.0.12.1:8080", "10.0.12.2:8080", "127.0.0.1:15093"], in: mesh.namespace))
            // 20 requests, each on a connection of its own (the server closes it), all to the service address.
            let urls = (1...20).map { "http://10.96.12.12/\($0)" }.joined(separator: " ")
            let answers = try runInCgroup(mesh.client.path, namespace: mesh.namespace,
                                          "curl -s --max-time 5 -H 'Connection: close' -w ' %{http_code}|' \(urls)").check().output
                .split(separator: "|")
            #expect(answers.count == 20 && answers.allSatisfy { $0.hasSuffix(" 0 200") }, "\(answers) proxy: \(proxy.isRunning ? "" : proxy.stop())")
            #expect(Set(answers.map { $0.prefix(1) }) == ["A", "B"], "the balancer should spread the proxy's 20 upstream connections: \(answers)")
            let counters = try mesh.redirect.counters()
            #expect(counters.redirected == 20 && counters.originalDestinationAnswered == 20, "\(counters)")
            #expect(counters.proxyBypassed == 20, "the proxy's own upstream connections must not be redirected: \(counters)")
            #expect(try balancer.counters().connects == 20, "the balancer saw the proxy's connects to the service address")
            #expect(proxy.terminate() == 0)
        }
    }

    /// Workloads and the proxy on this machine's loopback, for the datapath's redirect.
    struct LoopbackMesh {
        /// The mesh's cgroup, which the workloads' and the proxy's are in.
        let cgroup: Cgroup
        /// The workloads' cgroups, in the order asked for.
        var workloads: [Cgroup]
        /// The proxy's cgroup, registered.
        let proxy: Cgroup
        /// The datapath's redirect, attached to the mesh's cgroup.
        let redirect: ProxyRedirect

        /// A workload cgroup `name` in the mesh (removed with it) of `tenant`
        /// and `identity`, whose tenant's calls to 127.0.0.1:`port` go to the proxy's 127.0.0.1:`listener`.
        func addWorkload(_ name: String, tenant: UInt32, identity: UInt32, calling port: UInt16, through listener: UInt16) throws -> Cgroup {
            let workload = try Cgroup.create(name, under: cgroup)
            try redirect.register(workload: workload, tenant: tenant, identity: identity)
            try redirect.addRule(tenant: tenant, destination: CIDR("127.0.0.1/32"), port: port, proxy: Endpoint(.loopback, port: listener))
            return workload
        }
    }

    /// Runs `body` in a ``LoopbackMesh`` (its cgroup named by `tag`):
    /// `workloads` (name, tenant, identity) registered, the proxy cgroup
    /// registered, and each workload's tenant's calls to 127.0.0.1:`port` sent
    /// to the proxy's 127.0.0.1:`listener`; all of it removed afterwards.
    private func withLoopbackMesh(_ tag: String, workloads: [(name: String, tenant: UInt32, identity: UInt32)], calling port: UInt16,
                                  through listener: UInt16, _ body: (LoopbackMesh) async throws -> Void) async throws {
        try await withCgroup(tag) { cgroup in
            let proxyGroup = try Cgroup.create("proxy", under: cgroup)
            defer { try? proxyGroup.remove() }
            let redirect = try ProxyRedirect(attachingTo: cgroup)
            defer { redirect.detach() }
            try redirect.register(proxy: proxyGroup)
            var mesh = LoopbackMesh(cgroup: cgroup, workloads: [], proxy: proxyGroup, redirect: redirect)
            defer { for workload in mesh.workloads { try? workload.remove() } }
            for workload in workloads {
                mesh.workloads.append(try mesh.addWorkload(workload.name, tenant: workload.tenant, identity: workload.identity,
                                                           calling: port, through: listener))
            }
            try await body(mesh)
        }
    }

    /// Runs `proxy` in this process while `body` runs, then shuts it down
    /// gracefully. Its listeners (`listening`) are made in `cgroup`, the
    /// registered proxy cgroup, where the datapath's proxy side learns the
    /// original destinations: this process moves there until they listen,
    /// then back (accepted sockets stay with their listener's cgroup). The
    /// suite runs alone for this.
    private func serve(_ proxy: MeshProxy, listeningOn listening: [String], in cgroup: Cgroup, _ body: () async throws -> Void) async throws {
        let group = ServiceGroup(configuration: .init(services: [proxy], logger: Logger(label: "test-proxy")))
        let running = try await cgroup.withCurrentProcess {
            let running = Task { try await group.run() }
            let listened = try await awaitListeners(listening, timeout: .seconds(60))
            try #require(listened, "the proxy never listened on \(listening)")
            return running
        }
        defer { running.cancel() }
        #expect(try Cgroup.of(process: getpid()) != cgroup, "the test process did not move back")
        try await body()
        await group.triggerGracefulShutdown()
        try await running.value
    }

    /// Runs `body` in a ``RedirectedMesh`` (named by `tag`): `addresses` on
    /// the namespace's loopback, the client cgroup a workload of `tenant`
    /// (identity `tenant` × 100) whose connections to any of them (their /24)
    /// go to the proxy's 127.0.0.1:`listener` (unless not `redirecting`: the
    /// test adds its own rules), and the proxy cgroup registered; all of it
    /// removed afterwards.
    private func withServiceAddresses(_ tag: String, addresses: [String], tenant: UInt32, listener: UInt16, redirecting: Bool = true,
                                      _ body: (RedirectedMesh) throws -> Void) throws {
        try withRedirectedMesh(tag, tenant: tenant, identity: tenant * 100) { mesh in
            for address in addresses {
                try run(["ip", "netns", "exec", mesh.namespace, "ip", "addr", "add", "\(address)/32", "dev", "lo"]).check()
            }
            for network in Set(addresses.map { $0.split(separator: ".").dropLast().joined(separator: ".") + ".0/24" }) where redirecting {
                try mesh.redirect.addRule(tenant: tenant, destination: CIDR(network), proxy: Endpoint(.loopback, port: listener))
            }
            try body(mesh)
        }
    }
}
