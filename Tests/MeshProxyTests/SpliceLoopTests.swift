import Foundation
import Logging
import MeshKernel
import MeshTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import MeshProxy

@Suite("Splicing socket pairs on a splice loop, over loopback")
struct SpliceLoopTests {
    @Test("a changed polling budget reaches a tenant's running splice loop at once, with the configuration")
    func spliceSpinApplied() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17158"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17158"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "spin", listener: Endpoint(.loopback, port: 17_015), upstream: .fixed(Endpoint(.loopback, port: 17_158)))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            #expect(proxy.spliceLoop(of: "spin") == nil, "no loop before the first splice")
            let result = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17015", "1000"]).check() }
            #expect(result.output == "ok\n", "\(result.output) \(result.error)")
            #expect(proxy.spliceLoop(of: "spin")?.spinBudget == ProxyConfiguration(tenants: []).spliceSpin, "the default budget")
            try await proxy.apply(ProxyConfiguration(tenants: [tenant], spliceSpin: .microseconds(40)))
            #expect(proxy.spliceLoop(of: "spin")?.spinBudget == .microseconds(40))
            try await proxy.apply(ProxyConfiguration(tenants: [tenant], spliceSpin: .zero))
            #expect(proxy.spliceLoop(of: "spin")?.spinBudget == .zero)
        }
    }

    @Test("an HTTP tenant's splice loop polls for the HTTP budget and an L4 tenant's for the L4 one, each changed live on its own; a shared group's loop polls for the longer budget of the modes of the tenants on it")
    func spliceSpinByMode() async throws {
        let server = try await startNamedHTTPServer(port: 17_229, name: "S")
        defer { server.stop() }
        func tenants(http: Int, tcp: Int) -> [TenantConfiguration] {
            [TenantConfiguration(name: "spin-http", listener: Endpoint(.loopback, port: UInt16(http)), upstream: .fixed(Endpoint(.loopback, port: 17_229)),
                                 mode: .http(.everything(toLoopbackPort: 17_229))),
             TenantConfiguration(name: "spin-tcp", listener: Endpoint(.loopback, port: UInt16(tcp)), upstream: .fixed(Endpoint(.loopback, port: 17_229)))]
        }
        /// A request through `port` (HTTP, or spliced to the same server in L4).
        func get(_ port: Int) async throws -> String { try await offload { try run(["curl", "-s", "http://127.0.0.1:\(port)/a"]).check().output } }
        let defaults = ProxyConfiguration(tenants: [])
        #expect(defaults.httpSpliceSpin < defaults.spliceSpin, "the defaults would not tell the modes apart")

        let own = tenants(http: 17_228, tcp: 17_230)
        try await withProxy(ProxyConfiguration(tenants: own)) { proxy in
            #expect(try await get(17_228) == "S /a 0")
            #expect(try await get(17_230) == "S /a 0")
            #expect(proxy.spliceLoop(of: "spin-http")?.spinBudget == defaults.httpSpliceSpin)
            #expect(proxy.spliceLoop(of: "spin-tcp")?.spinBudget == defaults.spliceSpin)
            try await proxy.apply(ProxyConfiguration(tenants: own, httpSpliceSpin: .microseconds(7)))
            #expect(proxy.spliceLoop(of: "spin-http")?.spinBudget == .microseconds(7))
            #expect(proxy.spliceLoop(of: "spin-tcp")?.spinBudget == defaults.spliceSpin)
        }

        // One event loop: the HTTP tenant's loop polls for the HTTP budget until an L4 tenant joins it.
        let shared = tenants(http: 17_231, tcp: 17_232)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: [shared[0]]), group: group) { proxy in
            #expect(try await get(17_231) == "S /a 0")
            #expect(proxy.spliceLoop(of: "spin-http")?.spinBudget == defaults.httpSpliceSpin, "HTTP tenants only")
            try await proxy.apply(ProxyConfiguration(tenants: shared))
            #expect(try await get(17_232) == "S /a 0")
            #expect(proxy.spliceLoop(of: "spin-tcp") === proxy.spliceLoop(of: "spin-http"))
            #expect(proxy.spliceLoop(of: "spin-http")?.spinBudget == defaults.spliceSpin, "an L4 tenant beside")
        }
        // Two event loops, a tenant on each: each loop polls for its own tenant's mode.
        let apart = tenants(http: 17_236, tcp: 17_237)
        let twoLoops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { twoLoops.shutdownGracefully { _ in } }
        try await withProxy(ProxyConfiguration(tenants: apart), group: twoLoops) { proxy in
            #expect(try await get(17_236) == "S /a 0")
            #expect(try await get(17_237) == "S /a 0")
            let (http, tcp) = (try #require(proxy.spliceLoop(of: "spin-http")), try #require(proxy.spliceLoop(of: "spin-tcp")))
            try #require(http !== tcp, "the group put both tenants on one event loop")
            #expect(http.spinBudget == defaults.httpSpliceSpin && tcp.spinBudget == defaults.spliceSpin)
        }
    }

    /// What a spliced pair reported.
    final class Reports: Sendable {
        let fromClient = Atomic<Int>(0), fromUpstream = Atomic<Int>(0), ended = Atomic<Int>(0)
        let failures = Mutex<[Errno]>([])
    }

    /// A client peer and an upstream peer, spliced on `loop` through the two sockets the proxy would hold.
    private func spliced(on loop: SpliceLoop, idleTimeout: Duration = .seconds(60), maxBufferedBytes: Int = 256 * 1024,
                         buffers: TenantBuffers = TenantBuffers()) throws
        -> (client: Int32, upstream: Int32, reports: Reports, accepted: Bool) {
        let (client, proxyClient) = try loopbackPeerPair()
        let (upstream, proxyUpstream) = try loopbackPeerPair()
        let reports = Reports()
        let accepted = loop.splice(SpliceRequest(
            client: proxyClient, upstream: proxyUpstream,
            countFromClient: { reports.fromClient.add($0, ordering: .relaxed) }, countFromUpstream: { reports.fromUpstream.add($0, ordering: .relaxed) },
            bandwidth: nil, throttled: {}, buffers: buffers, failed: { error in reports.failures.withLock { $0.append(error) } },
            ended: { reports.ended.add(1, ordering: .relaxed) }, idleTimeout: idleTimeout, maxBufferedBytes: maxBufferedBytes), id: loop.reserveID())
        if !accepted {
            // Still ours: closed as the proxy would close them.
            close(proxyClient)
            close(proxyUpstream)
        }
        return (client, upstream, reports, accepted)
    }

    @Test("bytes cross both ways in order and are counted; a half-close crosses once everything before it is out, and the other direction goes on; the pair ends, reported once, when both directions have ended — sleeping at once, or polling first",
          arguments: [Duration.zero, .microseconds(3), .milliseconds(1)])
    func bothWaysAndHalfClose(spin: Duration) async throws {
        let loop = try SpliceLoop(name: "test-splice")
        defer { loop.stop() }
        loop.spin(upTo: spin)
        // A small buffer limit: the 4 MiB download goes through the proxy's backlog many times over.
        let (client, upstream, reports, _) = try spliced(on: loop, maxBufferedBytes: 4_096)
        defer { close(client); close(upstream) }
        // (Blocking socket calls run on threads of their own, never on the tasks' shared pool.)
        try sendAll(client, Array("hello".utf8))
        shutdown(client, Int32(SHUT_WR))
        let request = try await offload { receiveToEnd(upstream) }
        #expect(String(decoding: request.bytes, as: UTF8.self) == "hello" && request.error == nil)

        let download = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 % 251) }
        async let sent: Void = offload {
            try sendAll(upstream, download)
            shutdown(upstream, Int32(SHUT_WR))
        }
        let response = try await offload { receiveToEnd(client) }
        try await sent
        #expect(response.error == nil)
        // (A Boolean: an expectation on the arrays themselves would have the test library diff 4 MiB.)
        let intact = response.bytes == download
        #expect(intact, "\(response.bytes.count) of \(download.count) bytes; the first \(response.bytes.count) in order: \(response.bytes[...] == download.prefix(response.bytes.count))")
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })
        #expect(reports.fromClient.load(ordering: .relaxed) == 5)
        #expect(reports.fromUpstream.load(ordering: .relaxed) == download.count)
        #expect(reports.failures.withLock { $0 }.isEmpty)
    }

    @Test("a loop whose epoll fails ends: its pairs end, reported as the failure, and it takes no more")
    func epollFailureEnds() async throws {
        let loop = try SpliceLoop(name: "test-splice")
        defer { loop.stop() }
        let (client, upstream, reports, accepted) = try spliced(on: loop)
        defer { close(client); close(upstream) }
        #expect(accepted)
        // A byte across first: the pair is registered and the loop is back waiting.
        try sendAll(client, Array("p".utf8))
        #expect(try await offload { receive(upstream, count: 1) } == Array("p".utf8))
        // The loop's epoll descriptor now names /dev/null: the wait in progress goes on (on the
        // epoll it began with) until the next byte; the loop's next epoll call fails (EINVAL).
        let null = open("/dev/null", O_RDONLY)
        #expect(null >= 0 && dup2(null, loop.pollDescriptor) == loop.pollDescriptor)
        close(null)
        try sendAll(client, Array("ing".utf8))
        #expect(await eventually { !loop.isRunning }, "the loop went on after its epoll failed")
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })
        #expect(reports.failures.withLock { $0 } == [Errno(rawValue: EINVAL)])
        let end = try await offload { receiveToEnd(client) }
        #expect(end.bytes.isEmpty, "the client's connection was not closed with its pair")
        let (laterClient, laterUpstream, _, laterAccepted) = try spliced(on: loop)
        defer { close(laterClient); close(laterUpstream) }
        #expect(!laterAccepted, "an ended loop took a pair")
    }

    @Test("a reset on one side closes the other at once, reported as the failure it was")
    func resetCrosses() async throws {
        let loop = try SpliceLoop(name: "test-splice")
        defer { loop.stop() }
        let (client, upstream, reports, _) = try spliced(on: loop)
        defer { close(client) }
        try sendAll(client, Array("ping".utf8))
        #expect(try await offload { receive(upstream, count: 4) } == Array("ping".utf8))
        var reset = linger(l_onoff: 1, l_linger: 0)
        setsockopt(upstream, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
        close(upstream)
        let end = try await offload { receiveToEnd(client) }
        #expect(end.bytes.isEmpty && end.error == nil, "the client's connection did not end at once: \(end)")
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })
        #expect(reports.failures.withLock { $0 } == [Errno(rawValue: ECONNRESET)])
    }

    @Test("a pair silent in both directions for its idle timeout is closed within [timeout, 1.25 × timeout] (and scheduling); one that talks stays open")
    func idleTimeout() async throws {
        let loop = try SpliceLoop(name: "test-splice")
        defer { loop.stop() }
        let timeout = Duration.seconds(2)
        let (client, upstream, reports, _) = try spliced(on: loop, idleTimeout: timeout)
        defer { close(client); close(upstream) }
        // Talking every 100 ms for 3 s, then silent. All on a thread of its own, times
        // included: on a loaded machine the tasks' pool can be seconds late to resume a test.
        struct Observed: Sendable {
            var echoed = true, longestGap = Duration.zero, endedWhileTalking = false
            var silence = Duration.zero, end: (bytes: [UInt8], error: Errno?) = ([], nil)
        }
        let observed = try await offload { () -> Observed in
            var observed = Observed()
            var last = ContinuousClock.now
            for round in 0..<30 {
                usleep(100_000)
                try sendAll(client, [UInt8(round)])
                observed.echoed = observed.echoed && receive(upstream, count: 1) == [UInt8(round)]
                observed.longestGap = max(observed.longestGap, ContinuousClock.now - last)
                last = ContinuousClock.now
            }
            observed.endedWhileTalking = reports.ended.load(ordering: .relaxed) != 0
            observed.end = receiveToEnd(client)
            observed.silence = ContinuousClock.now - last
            return observed
        }
        #expect(observed.longestGap < timeout, "the test's own pauses were longer than the timeout: \(observed.longestGap)")
        #expect(observed.echoed && !observed.endedWhileTalking, "a pair that kept talking was closed")
        #expect(observed.end.bytes.isEmpty && observed.end.error == nil)
        expectClosedInTime(after: observed.silence, timeout: timeout)
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })
        #expect(reports.failures.withLock { $0 }.isEmpty)
    }

    /// A silent pair closed after `silence` closed within [timeout, 1.25 × timeout]
    /// of it — and a second more, for scheduling on a loaded machine.
    private func expectClosedInTime(after silence: Duration, timeout: Duration, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(silence >= timeout && silence < timeout * 1.25 + .seconds(1), "closed after \(silence) of silence", sourceLocation: sourceLocation)
    }

    @Test("a pair of a shorter idle timeout joining the loop (another tenant's, on a shared loop) leaves a silent pair's silence counted as it was, the part of a sweep period since the last sweep included: it still closes within [timeout, 1.25 × timeout]")
    func idleTimeoutAcrossTimeouts() async throws {
        let loop = try SpliceLoop(name: "test-splice")
        defer { loop.stop() }
        let timeout = Duration.seconds(8)
        // Silent from the start (its sweeps every 2 s); at 7.8 s, just before its fourth sweep,
        // a pair of a tenth of the timeout joins (its sweeps ten times as often). Counting only
        // whole periods would drop 1.8 s of silence and close it at 11.8 s.
        // All on a thread of its own, times included: the tasks' pool can be seconds late to resume a test.
        let (silence, reports) = try await offload { () -> (Duration, Reports) in
            let (client, upstream, reports, _) = try spliced(on: loop, idleTimeout: timeout)
            defer { close(client); close(upstream) }
            let started = ContinuousClock.now
            usleep(7_800_000)
            let (shortClient, shortUpstream, _, _) = try spliced(on: loop, idleTimeout: .milliseconds(800))
            defer { close(shortClient); close(shortUpstream) }
            _ = receiveToEnd(client)
            return (ContinuousClock.now - started, reports)
        }
        expectClosedInTime(after: silence, timeout: timeout)
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })
    }

    @Test("stopping the loop closes its open pairs and reports them ended; a stopped loop refuses a pair, whose sockets stay the caller's")
    func stop() async throws {
        let loop = try SpliceLoop(name: "test-splice")
        #expect(loop.threadID != nil)
        let (client, upstream, reports, _) = try spliced(on: loop)
        defer { close(client); close(upstream) }
        try sendAll(client, [1])
        #expect(try await offload { receive(upstream, count: 1) } == [1])
        loop.stop()
        #expect(try await offload { receiveToEnd(client).bytes.isEmpty && receiveToEnd(upstream).bytes.isEmpty })
        #expect(await eventually { reports.ended.load(ordering: .relaxed) == 1 })

        let (lateClient, lateUpstream, late, accepted) = try spliced(on: loop)
        defer { close(lateClient); close(lateUpstream) }
        #expect(!accepted)
        #expect(late.ended.load(ordering: .relaxed) == 0)
    }

    @Test("an L4 tenant on a thread of its own splices on its splice loop: a second thread of the tenant's name and nice value, whose CPU time is the tenant's; it ends with the removed tenant's last connection")
    func tenantSplicesOnItsLoop() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17162"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17162"]))
        let tenant = TenantConfiguration(name: "splice-a", listener: Endpoint(.loopback, port: 17_161), upstream: .fixed(Endpoint(.loopback, port: 17_162)),
                                         weight: 1)
        let heavy = TenantConfiguration(name: "splice-b", listener: Endpoint(.loopback, port: 17_163), upstream: .fixed(Endpoint(.loopback, port: 17_162)),
                                        weight: 2)
        try await withProxy(ProxyConfiguration(tenants: [tenant, heavy])) { proxy in
            #expect(threads(named: "mesh:splice-a").count == 1, "a splice loop before any L4 connection")
            // A connection held open: spliced, it starts the tenant's loop.
            let held = try await ClientBootstrap(group: peerGroup).connect(host: "127.0.0.1", port: 17_161).get()
            #expect(await eventually(timeout: .seconds(10)) { threads(named: "mesh:splice-a").count == 2 })
            let cpuBefore = proxy.statistics("splice-a")?.cpuTime ?? .zero
            // 1 MiB through the loop and back.
            let size = 1 << 20
            let echoed = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17161", "\(size)"]).check().output }
            #expect(echoed.hasPrefix("ok"), "\(echoed)")
            let tenantThreads = threads(named: "mesh:splice-a")
            #expect(tenantThreads.count == 2 && Set(tenantThreads.map(\.niceness)).count == 1,
                    "the splice loop runs at another nice value than its tenant's thread: \(tenantThreads)")
            #expect(threads(named: "mesh:splice-b").count == 1, "an idle L4 tenant started a splice loop")
            #expect((proxy.statistics("splice-a")?.cpuTime ?? .zero) > cpuBefore)
            #expect(await eventually { (proxy.statistics("splice-a")?.bytesFromUpstreams ?? 0) >= size })
            // Removed while a connection is open: both threads serve it to its end, then end.
            try await proxy.apply(ProxyConfiguration(tenants: [heavy]))
            #expect(threads(named: "mesh:splice-a").count == 2)
            try await held.close()
            #expect(await eventually(timeout: .seconds(10)) { threads(named: "mesh:splice-a").isEmpty })
        }
    }

    @Test("the L4 tenants of a shared event-loop group splice on the splice loop beside their listeners' event loop, one loop for both, started by the first splice and stopped with the proxy")
    func sharedGroupSplicesOnSharedLoop() async throws {
        let echo = try Background(["python3", "-c", echoServer, "17221"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17221"]))
        let tenants = [("shared-a", 17_222), ("shared-b", 17_223)].map { name, port in
            TenantConfiguration(name: name, listener: Endpoint(.loopback, port: UInt16(port)), upstream: .fixed(Endpoint(.loopback, port: 17_221)))
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let loop = try await withProxy(ProxyConfiguration(tenants: tenants), group: group) { proxy in
            #expect(proxy.spliceLoop(of: "shared-a") == nil, "a loop before any connection")
            // 1 MiB through each tenant and back.
            let size = 1 << 20
            for (name, port) in [("shared-a", 17_222), ("shared-b", 17_223)] {
                let echoed = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "\(port)", "\(size)"]).check().output }
                #expect(echoed.hasPrefix("ok"), "\(name): \(echoed)")
                #expect(await eventually { (proxy.statistics(name)?.bytesFromUpstreams ?? 0) >= size }, "\(name)")
            }
            let loop = try #require(proxy.spliceLoop(of: "shared-a"), "the splice ran on no splice loop")
            #expect(proxy.spliceLoop(of: "shared-b") === loop, "the two tenants have a loop each")
            return loop
        }
        #expect(await eventually(timeout: .seconds(10)) { !loop.isRunning }, "the shared loop outlived the proxy")
    }

    @Test("a tenant's splice loop whose thread has ended is replaced at the next splice by a new one at the tenant's nice value; the ended thread's id is no longer reported")
    func endedLoopReplaced() async throws {
        let thread = await TenantThread.start(for: "loop-again")
        defer { thread.retire() }
        try thread.prioritize(niceness: TenantThread.processNiceness + 3)
        thread.spinSplices(upTo: .microseconds(7))
        let first = try #require(try thread.spliceLoop())
        #expect(first.spinBudget == .microseconds(7), "a loop starts at the tenant's polling budget")
        #expect(try thread.spliceLoop() === first, "a running loop is kept")
        thread.spinSplices(upTo: .zero)
        #expect(first.spinBudget == .zero, "a running loop takes a new budget at once")
        first.spin(upTo: .seconds(5))
        #expect(first.spinBudget == SpliceLoop.longestSpin, "a budget is kept within the longest")
        #expect(first.threadID != nil)
        first.stop()
        #expect(await eventually(timeout: .seconds(10)) { !first.isRunning })
        #expect(first.threadID == nil)
        thread.spinSplices(upTo: .microseconds(3))
        let second = try #require(try thread.spliceLoop())
        #expect(second.spinBudget == .microseconds(3))
        #expect(second !== first && second.isRunning)
        let secondID = try #require(second.threadID)
        let loopThread = threads(named: "mesh:loop-again").first { $0.id == secondID }
        #expect(loopThread?.niceness == TenantThread.processNiceness + 3, "\(threads(named: "mesh:loop-again"))")
        thread.retire()
        #expect(await eventually(timeout: .seconds(10)) { !second.isRunning })
    }
}
