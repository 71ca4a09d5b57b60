// What HTTP visibility costs (issue: MeshTelemetry): a C client and a C
// server in two workload cgroups, with and without the capture watching both
// and the Swift pipeline (events -> exchanges -> metrics) consuming, in
// interleaved rounds. Runs in a network namespace of its own.
import CBenchBaseline
import Foundation
import MeshKernel
import MeshTelemetry
import MeshTelemetryPrometheus
import Prometheus
import Synchronization

private let httpRounds = 10
private let port: UInt16 = 18_700

/// The capture and the Swift pipeline behind it, while visibility is on.
private final class Visibility: Sendable {
    let capture: HTTPCapture
    let events: RingBufferRecords<SocketIOEvent>
    let progress = Progress()
    let consumer: Task<Void, Never>

    final class Progress: Sendable {
        let consumed = Atomic<Int>(0)
        let exchanges = Atomic<Int>(0)
    }

    init(watching groups: [Cgroup]) throws {
        capture = try HTTPCapture()
        for (index, group) in groups.enumerated() { try capture.watch(group, identity: UInt32(index + 1)) }
        events = try capture.events()
        let metrics = HTTPMetrics(factory: MeshPrometheusFactory(registry: PrometheusCollectorRegistry(), help: HTTPMetrics.help))
        let (events, progress) = (events, progress)
        consumer = Task {
            var assembler = HTTPExchangeAssembler()
            for await event in events {
                for exchange in assembler.consume(event) {
                    metrics.record(exchange)
                    progress.exchanges.add(1, ordering: .relaxed)
                }
                progress.consumed.add(1, ordering: .relaxed)
            }
        }
    }

    /// Waits until the pipeline has consumed every event the kernel sent.
    func drain() throws -> HTTPCapture.Counters {
        let deadline = now() + 10_000_000_000
        while true {
            let counters = try capture.counters()
            if UInt64(progress.consumed.load(ordering: .relaxed)) >= counters.callsCaptured + counters.callsCounted + counters.closes || now() > deadline {
                return counters
            }
            usleep(1_000)
        }
    }

    func stop() {
        events.finish()
        capture.detach()
    }
}

func httpBenchmarks() throws {
    let home = try Cgroup.of(process: getpid())
    let serverGroup = try Cgroup.create("mesh-bench-http-server-\(getpid())")
    let clientGroup = try Cgroup.create("mesh-bench-http-client-\(getpid())")
    let server = try start("/proc/self/exe", ["http-server", String(port)], quiet: false)
    defer {
        server.terminate()
        server.waitUntilExit()
        try? home.add(process: getpid())
        try? serverGroup.remove()
        try? clientGroup.remove()
    }
    try serverGroup.add(process: server.processIdentifier)
    try clientGroup.add(process: getpid())
    try waitForHTTPServer(port)

    let parts = Set(CommandLine.arguments.dropFirst(2))   // `http-inner kernel` runs one part
    if parts.isEmpty || parts.contains("fixed") { try fixedRate(server: server, serverGroup, clientGroup) }
    if parts.isEmpty || parts.contains("closed") { try closedLoop(serverGroup, clientGroup) }
    if parts.isEmpty || parts.contains("kernel") { try kernelTime(serverGroup, clientGroup) }
    if parts.isEmpty || parts.contains("pipeline") { try pipelineRate(serverGroup, clientGroup) }
}

private func fixedRate(server: Process, _ serverGroup: Cgroup, _ clientGroup: Cgroup) throws {
    let durationMilliseconds = 2_000
    print("HTTP/1.1 at a fixed 10000 requests/s over 4 keep-alive connections, \(durationMilliseconds) ms per round, C client and server in two cgroups; visibility = capture of both + Swift pipeline to Prometheus metrics")
    var offMean: [Double] = [], onMean: [Double] = [], offP99: [Double] = [], onP99: [Double] = []
    var offCPU: [Double] = [], onCPU: [Double] = [], lost: UInt64 = 0, requests = 0
    for round in 0..<httpRounds {
        for visible in (round % 2 == 0 ? [false, true] : [true, false]) {
            let visibility = visible ? try Visibility(watching: [serverGroup, clientGroup]) : nil
            let cpuBefore = ownCPUSeconds() + cpuSeconds(server.processIdentifier)
            let latencies = try fixedRateLatencies(port: port, milliseconds: durationMilliseconds)
            let count = latencies.count
            if let visibility {
                let counters = try visibility.drain()
                lost += counters.eventsLost + visibility.events.statistics.dropped
                visibility.stop()
            }
            let cpu = (ownCPUSeconds() + cpuSeconds(server.processIdentifier) - cpuBefore) / Double(count) * 1e6
            let sorted = latencies.sorted()
            let mean = sorted.reduce(0, +) / Double(sorted.count)
            requests += count
            if visible { onMean.append(mean); onP99.append(percentile(sorted, 0.99)); onCPU.append(cpu) }
            else { offMean.append(mean); offP99.append(percentile(sorted, 0.99)); offCPU.append(cpu) }
        }
    }
    report("mean latency, visibility off", "µs", offMean)
    report("mean latency, visibility on", "µs", onMean)
    ratio("mean on / off", onMean, offMean, goal: "<= 1.05")
    report("p99 latency, visibility off", "µs", offP99)
    report("p99 latency, visibility on", "µs", onP99)
    ratio("p99 on / off", onP99, offP99, goal: "—")
    report("CPU per request (client+server+pipeline), off", "µs", offCPU)
    report("CPU per request (client+server+pipeline), on", "µs", onCPU)
    let addedCPU = zip(onCPU, offCPU).map { $0 - $1 }
    print(String(format: "  => CPU added per request: median %.2f µs (per round %@)", median(addedCPU),
                 addedCPU.map { String(format: "%.2f", $0) }.joined(separator: " ")))
    print("  events lost with visibility on: \(lost) over \(requests / 2) requests  goal: 0")
}

/// One connection, requests back to back: what visibility adds to each round
/// trip, with both ends watched and with the server only; three variants
/// interleaved round by round.
private func closedLoop(_ serverGroup: Cgroup, _ clientGroup: Cgroup) throws {
    print("Closed loop, one connection: round trip (µs, 20,000 requests per round)")
    let variants: [(name: String, watched: [Cgroup])] = [("off", []), ("both ends watched", [serverGroup, clientGroup]), ("server only watched", [serverGroup])]
    var results = Array(repeating: [Double](), count: variants.count)
    // Round -1 warms every variant up (the first round read thousands of ns off in either direction) and is not kept.
    for round in -1..<httpRounds {
        for index in (round % 2 == 0 ? Array(variants.indices) : variants.indices.reversed()) {
            let visibility = variants[index].watched.isEmpty ? nil : try Visibility(watching: variants[index].watched)
            let total = bench_http_closed_loop(port, 20_000)
            guard total > 0 else { throw BenchmarkError(description: "closed loop failed") }
            if let visibility { _ = try visibility.drain(); visibility.stop() }
            if round >= 0 { results[index].append(Double(total) / 20_000 / 1_000) }
        }
    }
    for (index, variant) in variants.enumerated() { report("round trip, \(variant.name)", "µs", results[index]) }
    for index in 1..<variants.count {
        let added = zip(results[index], results[0]).map { ($0 - $1) * 1_000 }
        print(String(format: "  => added per request, %@: median %.0f ns (per round %@)  goal: <= 1500 ns", variants[index].name, median(added),
                     added.map { String(format: "%.0f", $0) }.joined(separator: " ")))
    }
}

/// The kernel's own accounting, in passes of their own (it costs time
/// itself): the capture against two floors on the same hooks with the same
/// workload check (`bpf/mesh-bench/capture_floor.bpf.c`) — one user read and
/// one ring record per call, the least any capture sending each call pays;
/// and the user read alone, sending nothing, the least any capture that reads
/// every call pays — with both ends watched and with the server only,
/// interleaved round by round.
private func kernelTime(_ serverGroup: Cgroup, _ clientGroup: Cgroup) throws {
    let requests = 20_000
    print("BPF run time per request from bpf_stats, closed loop of \(requests) requests on one connection, 3 interleaved rounds")
    let statistics = try RunTimeStatistics.enable()
    defer { withExtendedLifetime(statistics) {} }
    enum Variant: CaseIterable { case capture, floor, readOnlyFloor }
    let scopes: [(name: String, watched: [Cgroup])] = [("both ends", [serverGroup, clientGroup]), ("server only", [serverGroup])]
    var perRequest = Array(repeating: [Variant: [Double]](), count: scopes.count)
    for round in 0..<3 {
        for (index, scope) in scopes.enumerated() {
            let order = Variant.allCases
            let shift = round % order.count
            for variant in order[shift...] + order[..<shift] {
                let programs: [BPFProgram]
                let finish: () -> Void
                switch variant {
                case .capture:
                    let visibility = try Visibility(watching: scope.watched)
                    (programs, finish) = (visibility.capture.object.programs, { visibility.stop() })
                case .floor, .readOnlyFloor:
                    let floor = try CaptureFloor(watching: scope.watched, recordsWanted: variant == .floor)
                    (programs, finish) = (floor.programs, { floor.detach() })
                }
                defer { finish() }
                guard bench_http_closed_loop(port, Int64(requests)) > 0 else { throw BenchmarkError(description: "closed loop failed") }
                var nanoseconds: UInt64 = 0
                for program in programs { nanoseconds += try program.runStatistics().nanoseconds }
                perRequest[index][variant, default: []].append(Double(nanoseconds) / Double(requests))
            }
        }
    }
    for (index, scope) in scopes.enumerated() {
        let capture = perRequest[index][.capture] ?? [], floor = perRequest[index][.floor] ?? []
        report("capture, \(scope.name) watched", "ns", capture)
        report("floor (read + record per call), \(scope.name) watched", "ns", floor)
        report("floor (read only, nothing sent), \(scope.name) watched", "ns", perRequest[index][.readOnlyFloor] ?? [])
        print(String(format: "  => BPF run time per request (%@ watched): %.0f ns  goal: <= 1000 ns", scope.name, median(capture)))
        ratio("capture / floor, \(scope.name)", capture, floor, goal: "—")
    }
}

/// A floor program attached and watching `groups`: with `recordsWanted`, its
/// records left in its ring; without, it only reads.
private struct CaptureFloor {
    let object: CaptureFloorObject.Loaded
    let links: [BPFLink]
    var programs: [BPFProgram] { [object.programs.floorSend, object.programs.floorReceive] }

    init(watching groups: [Cgroup], recordsWanted: Bool) throws {
        let skeleton = try CaptureFloorObject.open()
        try skeleton.globals.recordsWanted.set(recordsWanted ? 1 : 0)
        object = try skeleton.load()
        let ids = try groups.map { try $0.id() }
        for id in ids { try object.maps.watchedWorkloads.insert(1, for: id) }
        try object.globals.watchedLowest.set(ids.min() ?? .max)
        try object.globals.watchedHighest.set(ids.max() ?? 0)
        links = [try object.programs.floorSend.attachBTFTracepoint(), try object.programs.floorReceive.attachBTFTracepoint()]
    }

    func detach() { for link in links { link.close() } }
}

/// The pipeline's own speed: events of real traffic, replayed through pairing and metrics.
private func pipelineRate(_ serverGroup: Cgroup, _ clientGroup: Cgroup) throws {
    do {
        let visibility = try Visibility(watching: [serverGroup, clientGroup])
        visibility.stop()
        let capture = try HTTPCapture()
        try capture.watch(serverGroup, identity: 1)
        try capture.watch(clientGroup, identity: 2)
        let stream = try capture.events()
        let recorded = Mutex<[SocketIOEvent]>([])
        let recorder = Task { for await event in stream { recorded.withLock { $0.append(event) } } }
        _ = bench_http_closed_loop(port, 20_000)
        let deadline = now() + 10_000_000_000
        while now() < deadline {
            let counters = try capture.counters()
            if UInt64(recorded.withLock { $0.count }) >= counters.callsCaptured + counters.callsCounted + counters.closes { break }
            usleep(1_000)
        }
        stream.finish()
        capture.detach()
        _ = recorder
        let events = recorded.withLock { $0 }
        let metrics = HTTPMetrics(factory: MeshPrometheusFactory(registry: PrometheusCollectorRegistry(), help: HTTPMetrics.help))
        var rates: [Double] = [], pairingOnly: [Double] = [], exchanges = 0
        for _ in 0..<5 {
            var assembler = HTTPExchangeAssembler()
            var start = now()
            for event in events { for exchange in assembler.consume(event) { metrics.record(exchange) } }
            rates.append(Double(events.count) / (Double(now() - start) / 1e9))
            assembler = HTTPExchangeAssembler()
            exchanges = 0
            start = now()
            for event in events { exchanges += assembler.consume(event).count }
            pairingOnly.append(Double(events.count) / (Double(now() - start) / 1e9))
        }
        print("Swift pipeline, \(events.count) events of real traffic replayed (\(exchanges) exchanges)")
        report("events per second, pairing + metrics", "/s", rates)
        report("events per second, pairing alone", "/s", pairingOnly)
        print("  goal: >= 200,000 events/s")
    }
}

/// `mesh-bench http-load PORT SECONDS [--browser] [--tls NAME CA]`: the
/// fixed-rate client (10,000 requests/s over 4 keep-alive connections)
/// against PORT for SECONDS, then its mean latency; `--browser` sends a
/// browser-like request head (574 bytes, nine fields) instead of a minimal
/// one, and `--tls` speaks HTTPS to the server name NAME, trusting the PEM
/// file CA (TLS 1.3 with AES-128-GCM; one handshake a connection).
func runHTTPLoad() throws {
    var arguments = Array(CommandLine.arguments.dropFirst(2))
    let usage = BenchmarkError(description: "usage: mesh-bench http-load PORT SECONDS (1 to 600) [--browser] [--tls NAME CA]")
    try takeTLSOption(from: &arguments, usage: usage)
    let browser = arguments.last == "--browser"
    if browser { arguments.removeLast() }
    guard arguments.count == 2, let port = UInt16(arguments[0]), let seconds = Int(arguments[1]), (1...600).contains(seconds) else { throw usage }
    bench_http_use_browser_request(browser ? 1 : 0)
    let latencies = try fixedRateLatencies(port: port, milliseconds: seconds * 1_000)
    print("\(latencies.count) requests, mean latency \(latencies.reduce(0, +) / Double(latencies.count)) µs")
}

/// `mesh-bench wait-http PORT... [--tls NAME CA]`: waits until each port answers an HTTP request (as the benchmarks do before measuring).
func runWaitHTTP() throws {
    var arguments = Array(CommandLine.arguments.dropFirst(2))
    let usage = BenchmarkError(description: "usage: mesh-bench wait-http PORT... [--tls NAME CA]")
    try takeTLSOption(from: &arguments, usage: usage)
    let ports = arguments.compactMap { UInt16($0) }
    guard !ports.isEmpty, ports.count == arguments.count else { throw usage }
    for port in ports { try waitForHTTPServer(port) }
}

/// Takes a trailing `--tls NAME CA` off `arguments`, and with it, makes the C clients speak TLS.
private func takeTLSOption(from arguments: inout [String], usage: BenchmarkError) throws {
    guard let option = arguments.firstIndex(of: "--tls") else { return }
    guard arguments.count == option + 3 else { throw usage }
    let result = bench_http_use_tls(arguments[option + 1], arguments[option + 2])
    guard result == 0 else { throw BenchmarkError(description: "TLS to \(arguments[option + 1]) trusting \(arguments[option + 2]): \(Errno(rawValue: -result))") }
    arguments.removeSubrange(option...)
}

/// `mesh-bench http-server PORT`: the benchmark's C HTTP server.
func runHTTPServer() -> Never {
    let port = UInt16(CommandLine.arguments.dropFirst(2).first ?? "") ?? port
    let result = bench_http_server(port)
    FileHandle.standardError.write(Data("mesh-bench http-server: \(Errno(rawValue: -result))\n".utf8))
    exit(1)
}
