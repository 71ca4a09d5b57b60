import Foundation
import NIOPosix
import MeshKernel
@testable import MeshProxy
import MeshTestSupport
import NIOCore
import Testing

/// Tenants sharing a proxy at capacity, over real sockets: the noisy
/// neighbour, weighted shares, shedding.
@Suite("MeshProxy fair sharing across tenants", .serialized)
struct FairSharingTests {
    private let loopback = IPAddress.loopback

    private func httpTenant(_ name: String, port: Int, upstream: Int, weight: Int = 1) -> TenantConfiguration {
        TenantConfiguration(name: name, listener: Endpoint(loopback, port: UInt16(port)),
                            mode: .http(.everything(toLoopbackPort: UInt16(upstream))), weight: weight)
    }

    @Test("a tenant flooding at 10× its share raises another tenant's p99 latency by less than 20% and gets no less than its own share")
    func noisyNeighbour() async throws {
        // Backends whose capacity is their concurrency: 20 ms a request.
        let noisyBackend = try await DelayedHTTPServer(port: 17_116, serviceTime: .milliseconds(20))
        let quietBackend = try await DelayedHTTPServer(port: 17_117, serviceTime: .milliseconds(20))
        defer { Task { await noisyBackend.stop(); await quietBackend.stop() } }
        // 4 exchanges, equal weights: a share of 2 each.
        let configuration = ProxyConfiguration(
            tenants: [httpTenant("noisy", port: 17_065, upstream: 17_116), httpTenant("quiet", port: 17_066, upstream: 17_117)],
            capacity: ProxyCapacity(maxConcurrentExchanges: 4, maxQueuedPerTenant: 64, maxQueueDelay: .seconds(10)))
        try await withProxy(configuration) { proxy in
            // The quiet tenant's demand, 2 connections (its share), measured alone and then beside the flood, three times each.
            var alone: [Duration] = [], beside: [Duration] = []
            var noisyRate: [Double] = [], quietRate: [Double] = [], quietAloneRate: [Double] = []
            for _ in 0..<3 {
                let aloneStart = ContinuousClock.now
                let baseline = try await httpLoad(port: 17_066, connections: 2, requests: 100)
                quietAloneRate.append(Double(baseline.answered) / (ContinuousClock.now - aloneStart).inSeconds)
                #expect(baseline.statuses == [200: 200])
                alone.append(baseline.percentile(0.99))

                // 20 connections: ten times the noisy tenant's share of 2.
                let stop = LoadStop()
                let flood = Task { try await httpLoad(port: 17_065, connections: 20, requests: 100_000, stop: stop) }
                let routedBefore = proxy.statistics("noisy")?.requestsRouted ?? 0
                #expect(await eventually(timeout: .seconds(10)) { (proxy.statistics("noisy")?.requestsRouted ?? 0) > routedBefore + 100 })
                let start = ContinuousClock.now, routedAtStart = proxy.statistics("noisy")?.requestsRouted ?? 0
                let measured = try await httpLoad(port: 17_066, connections: 2, requests: 100)
                let elapsed = ContinuousClock.now - start
                let routed = (proxy.statistics("noisy")?.requestsRouted ?? 0) - routedAtStart
                stop.stop()
                let flooded = try await flood.value
                #expect(measured.statuses == [200: 200])
                #expect(flooded.brokenConnections == 0 && flooded.statuses.keys.allSatisfy { $0 == 200 }, "\(flooded.statuses)")
                beside.append(measured.percentile(0.99))
                noisyRate.append(Double(routed) / elapsed.inSeconds)
                quietRate.append(Double(measured.answered) / elapsed.inSeconds)
            }
            // Medians of three runs each: the quiet tenant's p99 within 20%.
            let ratio = beside.sorted()[1].inSeconds / alone.sorted()[1].inSeconds
            #expect(ratio <= 1.2, "quiet p99 alone \(alone), beside the flood \(beside)")
            // The noisy tenant gets at least its share: 2 exchanges of 20 ms, 100 requests a second (less 20% for timers and loopback).
            #expect(noisyRate.allSatisfy { $0 >= 80 }, "noisy tenant's rate \(noisyRate)")
            // And the quiet tenant's throughput beside the flood is its share too: its 2 connections, one request per
            // 20 ms each, as fast as alone (which is its share less the round trips), within 10%, in every run
            // (measured here 0.96–1.00 times its rate alone, about 90 of its nominal 100 requests a second).
            #expect(quietRate.allSatisfy { $0 >= 0.9 * quietAloneRate.sorted()[1] },
                    "quiet tenant's rate beside the flood \(quietRate), alone \(quietAloneRate)")
            #expect(proxy.statistics("noisy")?.shedExchanges == 0)
        }
    }

    @Test("two tenants flooding a full proxy share it by their weights, 1:3")
    func weightedShares() async throws {
        let lightBackend = try await DelayedHTTPServer(port: 17_118, serviceTime: .milliseconds(10))
        let heavyBackend = try await DelayedHTTPServer(port: 17_119, serviceTime: .milliseconds(10))
        defer { Task { await lightBackend.stop(); await heavyBackend.stop() } }
        let configuration = ProxyConfiguration(
            tenants: [httpTenant("light", port: 17_067, upstream: 17_118, weight: 1), httpTenant("heavy", port: 17_068, upstream: 17_119, weight: 3)],
            capacity: ProxyCapacity(maxConcurrentExchanges: 8, maxQueuedPerTenant: 64, maxQueueDelay: .seconds(10)))
        try await withProxy(configuration) { proxy in
            let stop = LoadStop()
            async let light = httpLoad(port: 17_067, connections: 20, requests: 100_000, stop: stop)
            async let heavy = httpLoad(port: 17_068, connections: 20, requests: 100_000, stop: stop)
            // Both are flooding once each has been served for a while; then count a window of 1.5 s.
            #expect(await eventually(timeout: .seconds(10)) {
                (proxy.statistics("light")?.requestsRouted ?? 0) > 100 && (proxy.statistics("heavy")?.requestsRouted ?? 0) > 300
            })
            let before = (proxy.statistics("light")!.requestsRouted, proxy.statistics("heavy")!.requestsRouted)
            try await Task.sleep(for: .milliseconds(1_500))   // a measuring window, not a wait for a condition
            let after = (proxy.statistics("light")!.requestsRouted, proxy.statistics("heavy")!.requestsRouted)
            stop.stop()
            let (lightResult, heavyResult) = try await (light, heavy)
            #expect(lightResult.brokenConnections == 0 && heavyResult.brokenConnections == 0)
            let ratio = Double(after.1 - before.1) / Double(after.0 - before.0)
            #expect((2.4...3.6).contains(ratio), "heavy:light = \(after.1 - before.1):\(after.0 - before.0)")
        }
    }

    @Test("two tenants flooding one contended CPU share it by their weights, 1:3: each runs on a thread of its own that the kernel schedules by weight")
    func weightedCPU() async throws {
        let lightBackend = try await DelayedHTTPServer(port: 17_151, serviceTime: .zero)
        let heavyBackend = try await DelayedHTTPServer(port: 17_152, serviceTime: .zero)
        defer { Task { await lightBackend.stop(); await heavyBackend.stop() } }
        // Each request walks 1,200 routes, so that the proxy's work, not the peers', is what is contended.
        let configuration = ProxyConfiguration(tenants: [costlyTenant("cpu-light", port: 17_091, upstream: 17_151, routes: 400, weight: 1),
                                                         costlyTenant("cpu-heavy", port: 17_092, upstream: 17_152, routes: 400, weight: 3)])
        try await withProxy(configuration) { proxy in
            let light = threads(named: "mesh:cpu-light"), heavy = threads(named: "mesh:cpu-heavy")
            #expect(proxy.statistics("cpu-light")?.cpuTime != nil && proxy.statistics("cpu-heavy")?.cpuTime != nil)
            // Weight 3 against 1: five levels of 1.25 apart (3.05), from the process's own.
            #expect(light.map(\.niceness) == [TenantThread.processNiceness + 5] && heavy.map(\.niceness) == [TenantThread.processNiceness], "light \(light), heavy \(heavy)")
            // Both threads alone on CPU 0, as tenants contend on a busy node; their peers on the other CPU.
            defer { restoreThreads() }
            try giveCPU0(to: (light + heavy).map(\.id))

            // The light tenant floods with more connections than the heavy one.
            let stop = LoadStop()
            async let lightLoad = httpLoad(port: 17_091, connections: 12, requests: 1_000_000, stop: stop)
            async let heavyLoad = httpLoad(port: 17_092, connections: 8, requests: 1_000_000, stop: stop)
            #expect(await eventually(timeout: .seconds(20)) {
                (proxy.statistics("cpu-light")?.requestsRouted ?? 0) > 50 && (proxy.statistics("cpu-heavy")?.requestsRouted ?? 0) > 50
            })
            let start = ContinuousClock.now
            let before = try #require(proxy.statistics("cpu-light")).cpuAndRequests, beforeHeavy = try #require(proxy.statistics("cpu-heavy")).cpuAndRequests
            try await Task.sleep(for: .seconds(2))   // a measuring window, not a wait for a condition
            let after = try #require(proxy.statistics("cpu-light")).cpuAndRequests, afterHeavy = try #require(proxy.statistics("cpu-heavy")).cpuAndRequests
            let window = ContinuousClock.now - start
            stop.stop()
            let (lightResult, heavyResult) = try await (lightLoad, heavyLoad)
            #expect(lightResult.brokenConnections == 0 && heavyResult.brokenConnections == 0)
            let lightCPU = (after.cpu - before.cpu).inSeconds, heavyCPU = (afterHeavy.cpu - beforeHeavy.cpu).inSeconds
            let lightServed = after.requests - before.requests, heavyServed = afterHeavy.requests - beforeHeavy.requests
            let report = "CPU light \(lightCPU) s heavy \(heavyCPU) s in \(window); requests light \(lightServed) heavy \(heavyServed)"
            // The CPU was contended: the two threads kept CPU 0 busy most of the time.
            #expect(lightCPU + heavyCPU >= 0.6 * window.inSeconds, "\(report)")
            // Shared by weight (3.05 by the kernel's table), though the light tenant had more connections (12 against 8).
            #expect((2.5...3.7).contains(heavyCPU / lightCPU), "\(report)")
            #expect(Double(heavyServed) / Double(lightServed) >= 2.5, "\(report)")
        }
        // The threads end with the proxy.
        #expect(await eventually(timeout: .seconds(10)) { threads(named: "mesh:cpu-light").isEmpty && threads(named: "mesh:cpu-heavy").isEmpty })
    }

    @Test("a tenant flooding the proxy's CPU slows a quiet neighbour far less on threads of their own than on one shared event loop")
    func cpuNoisyNeighbour() async throws {
        try await withFloodPeers(quietBackend: 17_154, noisyBackend: 17_155) { quietPeers in
            // Equal weights; each of the noisy tenant's requests walks 200 routes.
            let configuration = ProxyConfiguration(tenants: [costlyTenant("cpu-quiet", port: 17_095, upstream: 17_154, routes: 0),
                                                             costlyTenant("cpu-noisy", port: 17_096, upstream: 17_155, routes: 200)])

            /// The quiet tenant's mean latency (2 connections) alone and beside the flood (20 connections),
            /// with the proxy's threads (the tenants' own event and splice loops, or the shared event loop
            /// and the shared splice loop beside it) on CPU 0.
            func quietLatency(sharing group: MultiThreadedEventLoopGroup?) async throws -> (alone: Double, beside: Double) {
                // (Stopped, its listeners closed, before the next one binds the same ports.)
                try await withProxy(configuration, group: group) { proxy in try await measure(proxy, sharing: group) }
            }
            func measure(_ proxy: MeshProxy, sharing group: MultiThreadedEventLoopGroup?) async throws -> (alone: Double, beside: Double) {
                // A request each first: the splice loops start with the first connection.
                for port in [17_095, 17_096] { _ = try await httpLoad(port: port, connections: 1, requests: 1, peers: quietPeers) }
                let proxyThreads = if let group {
                    [try await threadID(of: group.next())] + [proxy.spliceLoop(of: "cpu-quiet")?.threadID].compactMap { $0 }
                } else {
                    (threads(named: "mesh:cpu-quiet") + threads(named: "mesh:cpu-noisy")).map(\.id)
                }
                #expect(proxyThreads.count == (group == nil ? 4 : 2))
                if group != nil { #expect(proxy.spliceLoop(of: "cpu-quiet") === proxy.spliceLoop(of: "cpu-noisy"), "one shared splice loop") }
                for thread in proxyThreads { _ = try run(["taskset", "-p", "-c", "0", "\(thread)"]).check() }
                func mean(_ result: LoadResult) -> Double { result.latencies.map(\.inSeconds).reduce(0, +) / Double(max(1, result.latencies.count)) }
                let alone = try await httpLoad(port: 17_095, connections: 2, requests: 300, peers: quietPeers)
                let stop = LoadStop()
                let flood = Task { try await httpLoad(port: 17_096, connections: 20, requests: 1_000_000, stop: stop) }
                #expect(await eventually(timeout: .seconds(20)) { (proxy.statistics("cpu-noisy")?.requestsRouted ?? 0) > 100 })
                let beside = try await httpLoad(port: 17_095, connections: 2, requests: 300, peers: quietPeers)
                stop.stop()
                let flooded = try await flood.value
                #expect(alone.statuses == [200: 600] && beside.statuses == [200: 600] && flooded.brokenConnections == 0)
                return (mean(alone), mean(beside))
            }
            let sharedLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            defer { sharedLoop.shutdownGracefully { _ in } }
            let shared = try await quietLatency(sharing: sharedLoop)
            let own = try await quietLatency(sharing: nil)
            // The comparison means something only if the flood contends the shared loop.
            #expect(shared.beside >= 3 * shared.alone, "the flood did not slow the quiet tenant on one shared loop: its requests are too cheap; \(shared)")
            // Measured here before demotion existed: 1.2–1.5 ms beside the flood (0.6–0.7 ms alone) on threads of their own, 7.2–9.4 ms on one shared loop.
            #expect(own.beside <= 0.5 * shared.beside, "quiet mean latency, own threads \(own), one shared loop \(shared) (alone, beside the flood; seconds)")
        }
    }

    // With CAP_SYS_NICE (a demoted thread must be restored): without, tenants are never demoted.
    @Test("a tenant flooding the proxy's CPU at equal weight is demoted below its quiet neighbour, whose thread then no longer waits behind it, and still gets more than its share; restored when the flood ends",
          .sysNice)
    func cpuFloodDemoted() async throws {
        try await withFloodPeers(quietBackend: 17_156, noisyBackend: 17_157) { quietPeers in
            // The flood's client and backend (the shared peer loops) behind everything: what is measured is the proxy's share.
            for loop in peerGroup.makeIterator() { try ThreadScheduling.setFair(thread: try await threadID(of: loop), niceness: 19) }
            // Equal weights; each of the noisy tenant's requests walks 200 routes.
            let configuration = ProxyConfiguration(tenants: [costlyTenant("dem-quiet", port: 17_097, upstream: 17_156, routes: 0),
                                                             costlyTenant("dem-noisy", port: 17_098, upstream: 17_157, routes: 200)])
            try await withProxy(configuration) { proxy in
                let quiet = threads(named: "mesh:dem-quiet"), noisy = threads(named: "mesh:dem-noisy")
                try #require(quiet.count == 1 && noisy.count == 1)
                // The two tenant threads alone on CPU 0; every other thread of this process on the other CPU.
                try giveCPU0(to: (quiet + noisy).map(\.id))
                /// The quiet tenant's demand: 2 connections, each pausing 2 ms between requests (far below its half of CPU 0).
                func quietLoad(_ requests: Int) async throws -> LoadResult {
                    let result = try await httpLoad(port: 17_097, connections: 2, requests: requests, pause: .milliseconds(2), peers: quietPeers)
                    #expect(result.statuses == [200: 2 * requests])
                    return result
                }
                var alone: [Duration] = [], beside: [Duration] = [], quietWaits: [Duration] = []
                // The noisy tenant's share of CPU 0's time, and of the part of it that was not idle.
                var noisyShare: [Double] = [], noisyShareOfBusy: [Double] = []
                for _ in 0..<3 {
                    _ = try await quietLoad(20)   // warm
                    alone.append(try await quietLoad(400).percentile(0.99))
                    #expect(proxy.statistics("dem-noisy")?.isDemoted == false)

                    // 20 connections flooding: the noisy tenant wants all of CPU 0.
                    let stop = LoadStop()
                    let flood = Task { try await httpLoad(port: 17_098, connections: 20, requests: 1_000_000, stop: stop) }
                    let routedBefore = proxy.statistics("dem-noisy")?.requestsRouted ?? 0
                    #expect(await eventually(timeout: .seconds(20)) { (proxy.statistics("dem-noisy")?.requestsRouted ?? 0) > routedBefore + 100 })
                    // The quiet tenant waits for CPU 0 behind the flood: within a period or two the noisy tenant is demoted.
                    var demoted = false
                    let deadline = ContinuousClock.now + .seconds(20)
                    while !demoted && ContinuousClock.now < deadline {
                        _ = try await quietLoad(10)
                        demoted = proxy.statistics("dem-noisy")?.isDemoted == true
                    }
                    #expect(demoted, "the flooding tenant was not demoted")
                    // Both of its threads: its event loop's, and its splice loop's, which serves its HTTP.
                    #expect(threads(named: "mesh:dem-noisy").map(\.niceness) == [19, 19])
                    let start = ContinuousClock.now, cpuBefore = proxy.statistics("dem-noisy")?.cpuTime ?? .zero, cpu0Before = try CPUTicks(cpu: 0)
                    // (The quiet tenant's threads: its event loop's and its splice loop's, started by its first connection.)
                    let quietThreads = threads(named: "mesh:dem-quiet").map(\.id)
                    let waitsBefore = try #require(schedulingStatistics(ofThreads: quietThreads))
                    beside.append(try await quietLoad(400).percentile(0.99))
                    let waitsAfter = try #require(schedulingStatistics(ofThreads: quietThreads))
                    quietWaits.append((waitsAfter.waited - waitsBefore.waited) / max(1, waitsAfter.runs - waitsBefore.runs))
                    let window = ContinuousClock.now - start, cpuUsed = (proxy.statistics("dem-noisy")?.cpuTime ?? .zero) - cpuBefore
                    let cpu0Idle = try CPUTicks(cpu: 0).idleShare(since: cpu0Before)
                    #expect(proxy.statistics("dem-quiet")?.isDemoted == false)
                    stop.stop()
                    let flooded = try await flood.value
                    #expect(flooded.brokenConnections == 0 && flooded.statuses.keys.allSatisfy { $0 == 200 }, "\(flooded.statuses)")
                    noisyShare.append(cpuUsed.inSeconds / window.inSeconds)
                    noisyShareOfBusy.append(noisyShare.last! / max(0.01, 1 - cpu0Idle))
                    // The flood over, the noisy tenant is restored.
                    #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("dem-noisy")?.isDemoted == false })
                }
                let report = "quiet tenant's threads waited \(quietWaits) a run beside the flood; quiet p99 alone \(alone), beside the flood \(beside)"
                // The quiet tenant's thread no longer waits behind the flood: measured here 1–7 µs a run (about 2 µs
                // alone), against 150–180 µs with the same flood undemoted. (The bound is the demotion's own threshold:
                // a few of the kernel's non-preemptible milliseconds on CPU 0 add some microseconds to the mean.)
                #expect(quietWaits.allSatisfy { $0 < CPUFairShare.heldBack }, "\(report)")
                // Its p99 (medians of three runs): measured here 1.6–2.2× its p99 alone, against 6.1–6.4× undemoted. The
                // rest is outside the proxy's threads: this debug build's peers and, on this kernel (no preemption inside
                // it, a 4 ms tick), kernel work that runs on for milliseconds. `Benchmarks/quiet-tenant-p99.sh` measures
                // the release build.
                let ratio = beside.sorted()[1].inSeconds / alone.sorted()[1].inSeconds
                #expect(ratio <= 3, "\(report)")
                // Demoted, the noisy tenant still had more than its half of CPU 0: what the quiet one left. Its flood's
                // client and backend (on the other CPU, behind everything there) do not always keep up: CPU 0 then idles
                // (measured here over 30 rounds: 19–35% idle in about a third of them, the other CPU fully busy
                // meanwhile where it was measured, the noisy tenant at 0.48–0.65 of CPU 0; 0.70–0.88 in the others).
                // So: more than half of the time CPU 0 was busy in every round, and more than half of all its time
                // in the round where the flood kept up best.
                let shares = "noisy tenant's share of CPU 0 \(noisyShare), of its busy time \(noisyShareOfBusy)"
                #expect(noisyShareOfBusy.allSatisfy { $0 > 0.5 && $0 <= 1.05 }, "\(shares)")   // (above 1: a measurement gone wrong)
                #expect(noisyShare.max()! > 0.5, "\(shares)")
            }
        }
    }

    // Root: the quiet client runs at nice -10, and the proxy demotes only with CAP_SYS_NICE.
    @Test("the issue's bound where the proxy's own CPU is what a flood contends: a tenant offering more than the mesh-proxy program's CPU serves, at equal weight, raises a quiet neighbour's p99 by less than 20% (median of five rounds), and the flooding tenant still has more than half of that CPU — Benchmarks/quiet-tenant-p99.sh's set-up: the program alone on one CPU, its peers in processes of their own on the other",
          .sysNice)
    func cpuFloodQuietP99() async throws {
        try #require(getuid() == 0, "the benchmark script runs its quiet client at nice -10: run as root")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = root.appendingPathComponent("Benchmarks/quiet-tenant-p99.sh").path
        let bench = buildProductsDirectory.appendingPathComponent("mesh-bench").path
        // (`timeout` ends the script with SIGTERM, so that its own trap ends what it started.)
        let result = try await offload {
            try run(["env", "MESH_BENCH=\(bench)", "timeout", "--kill-after=10", "180", "bash", script, "5", "mesh=\(meshProxyProgram)"],
                    timeout: .seconds(200))
        }
        #expect(result.status == 0, "\(result)")
        // "round N mesh alone: p50 A p90 B p99 C p99-all D | beside the flood: p50 … p99 G … | noisy tenant's thread: S% of CPU 0"
        let rounds = result.output.matches(of: /alone: .*? p99 (\d+) .*\| beside the flood: .*? p99 (\d+) .*\| noisy tenant's thread: (\d+)% of CPU 0/)
            .compactMap { match in Double(match.1).flatMap { alone in Double(match.2).flatMap { beside in Double(match.3).map { (alone, beside, $0) } } } }
        try #require(rounds.count == 5, "\(result)")
        let ratios = rounds.map { $0.1 / $0.0 }.sorted(), shares = rounds.map(\.2).sorted()
        // Measured here with this debug build: 0.32–0.56 over 12 rounds (beside the flood CPU 0 never idles, so the
        // quiet tenant's thread is never woken from idle); without demotion (the program without CAP_SYS_NICE)
        // 4.7–8.6 over 8 rounds.
        #expect(ratios[2] <= 1.2, "quiet tenant's p99 beside the flood over its p99 alone, per round: \(ratios)\n\(result.output)")
        #expect(shares[2] > 50, "the noisy tenant's share of CPU 0 (%) per round: \(shares)")
    }

    @Test("at capacity, a request finding its tenant's queue full or waiting too long gets 503 with Retry-After; an L4 connection is refused; both counted")
    func shedding() async throws {
        let slowBackend = try await DelayedHTTPServer(port: 17_120, serviceTime: .milliseconds(400))
        defer { Task { await slowBackend.stop() } }
        let echo = try Background(["python3", "-c", echoServer, "17121"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17121"], timeout: .seconds(10)))
        // Two exchanges (a share of one each), one place in a tenant's queue, 100 ms of waiting at most.
        let capacity = ProxyCapacity(maxConcurrentExchanges: 2, maxQueuedPerTenant: 1, maxQueueDelay: .milliseconds(100), retryAfter: .seconds(2))
        let l4 = TenantConfiguration(name: "stream", listener: Endpoint(loopback, port: 17_069), upstream: .fixed(Endpoint(loopback, port: 17_121)))
        try await withProxy(ProxyConfiguration(tenants: [httpTenant("web", port: 17_070, upstream: 17_120), l4], capacity: capacity)) { proxy in
            // Four requests at once: web's share and the idle exchange serve two, one waits 100 ms and is shed, one finds the queue full.
            let result = try await httpLoad(port: 17_070, connections: 4, requests: 1)
            #expect(result.statuses == [200: 2, 503: 2], "\(result.statuses)")
            #expect(result.retryAfter == ["2"])
            #expect(proxy.statistics("web")?.shedExchanges == 2)

            // L4: two connections hold the stream tenant's share and the idle exchange; more are refused at once.
            let go = try GoSignal()
            defer { go.remove() }
            let holders = try (0..<2).map { _ in try Background(["python3", "-c", holdingClient, "127.0.0.1", "17069", go.path]) }
            defer { for holder in holders { holder.stop() } }
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("stream")?.activeConnections == 2 })
            let burst = try await offload { try run(["python3", "-c", connectionBurst, "127.0.0.1", "17069", "3"]).check().output }
            #expect(burst.hasPrefix("0 "), "\(burst)")
            #expect(proxy.statistics("stream")?.shedExchanges == 3)
            #expect(proxy.statistics("stream")?.refusedConnections == 0)
            // The held connections were untouched.
            #expect(go.give())
            #expect(await holders.finish() == ["connected\nok\n", "connected\nok\n"])
            // Their exchanges are back: a new connection is served.
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("stream")?.activeConnections == 0 })
            let served = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17069", "1000"]).check().output }
            #expect(served == "ok\n")
        }
    }
}

/// The kernel's id of the thread that runs `loop`.
func threadID(of loop: any EventLoop) async throws -> Int32 {
    try #require(try await loop.submit { ThreadScheduling.currentThreadID() }.get())
}

/// Runs `body` with the peers of a quiet tenant beside a flooding one: the quiet tenant's loop (its client
/// and its backend on 127.0.0.1:`quietPort`), ahead of the flood's peers by priority where CAP_SYS_NICE
/// allows, and the noisy tenant's backend on 127.0.0.1:`noisyPort` on the shared peer loops. Afterwards
/// both backends stop and every thread of this process is restored.
private func withFloodPeers(quietBackend quietPort: Int, noisyBackend noisyPort: Int,
                            _ body: (MultiThreadedEventLoopGroup) async throws -> Void) async throws {
    let quietPeers = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    defer { quietPeers.shutdownGracefully { _ in } }
    let quietBackend = try await DelayedHTTPServer(port: quietPort, serviceTime: .zero, group: quietPeers)
    let noisyBackend = try await DelayedHTTPServer(port: noisyPort, serviceTime: .zero)
    defer { Task { await quietBackend.stop(); await noisyBackend.stop() } }
    defer { restoreThreads() }
    if Capability.sysNice.isEffective {
        try ThreadScheduling.setFair(thread: try await threadID(of: quietPeers.next()), niceness: TenantThread.processNiceness - 10)
    }
    try await body(quietPeers)
}

/// An HTTP tenant whose every request costs the proxy a walk over `count`
/// routes to hosts that do not match before the catch-all to 127.0.0.1:`upstream`.
private func costlyTenant(_ name: String, port: Int, upstream: Int, routes count: Int, weight: Int = 1) -> TenantConfiguration {
    // Routes that never match, each costing a header lookup (the load's requests have no such header):
    // a request's CPU cost grows with `count`; 200 of them cost about what 600 routes by host did before
    // hosts of different lengths were told apart without a lowercased copy (which made those free).
    let routes = (0..<count).map { HTTPRoute(headers: ["x-costly-route": "\($0)"], cluster: "backend") } + [HTTPRoute(cluster: "backend")]
    let routing = HTTPRouting(routes: routes, clusters: ["backend": HTTPCluster(endpoints: [Endpoint(.loopback, port: UInt16(upstream))])])
    return TenantConfiguration(name: name, listener: Endpoint(.loopback, port: UInt16(port)), mode: .http(routing), weight: weight)
}

extension TenantStatistics {
    /// The tenant's thread's CPU time and its routed requests so far.
    var cpuAndRequests: (cpu: Duration, requests: Int) { (cpuTime ?? .zero, requestsRouted) }
}
