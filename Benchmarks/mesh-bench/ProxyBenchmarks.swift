// What the per-node proxy costs as the one hop (issue: MeshProxy), in L4
// mode: MeshProxy (the mesh-proxy program) side by side with HAProxy in TCP
// mode, against the direct connection, at a fixed request rate; and the
// proxy's memory with 30 idle tenants. Runs in a network namespace of its own.
import CBenchBaseline
import Foundation
import MeshKernel

private let proxyRounds = 7
private let serverPort: UInt16 = 18_800, meshProxyPort: UInt16 = 18_801, haproxyPort: UInt16 = 18_802

private func start(_ path: String, _ arguments: [String]) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
}

private func waitForListener(_ port: UInt16) throws {
    for _ in 0..<300 {
        if bench_http_closed_loop(port, 1) > 0 { return }
        usleep(10_000)
    }
    throw BenchmarkError(description: "nothing answers on port \(port)")
}

func proxyBenchmarks() throws {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let meshProxyPath = directory.appendingPathComponent("mesh-proxy").path
    guard FileManager.default.isExecutableFile(atPath: meshProxyPath) else {
        throw BenchmarkError(description: "\(meshProxyPath) is missing: build it in release too (make bench does)")
    }
    let server = try start("/proc/self/exe", ["http-server", String(serverPort)])
    defer { server.terminate(); server.waitUntilExit() }
    try waitForListener(serverPort)

    let meshProxy = try start(meshProxyPath, ["--tenant", "bench=127.0.0.1:\(meshProxyPort),upstream=127.0.0.1:\(serverPort)"])
    defer { meshProxy.terminate(); meshProxy.waitUntilExit() }
    let configuration = FileManager.default.temporaryDirectory.appendingPathComponent("mesh-bench-haproxy-\(getpid()).cfg")
    try """
        global
            maxconn 4096
        defaults
            mode tcp
            timeout connect 5s
            timeout client 60s
            timeout server 60s
        listen bench
            bind 127.0.0.1:\(haproxyPort)
            server upstream 127.0.0.1:\(serverPort)

        """.write(to: configuration, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: configuration) }
    let haproxy = try start("/usr/sbin/haproxy", ["-db", "-f", configuration.path])
    defer { haproxy.terminate(); haproxy.waitUntilExit() }
    try waitForListener(meshProxyPort)
    try waitForListener(haproxyPort)

    let rate = 10_000, connections = 4, durationMilliseconds = 2_000
    print("L4 proxy as the one hop: HTTP/1.1 at a fixed \(rate) requests/s over \(connections) keep-alive connections, \(durationMilliseconds) ms per round, C client and server")
    let variants: [(name: String, port: UInt16, process: Process?)] = [
        ("direct", serverPort, nil), ("MeshProxy (L4)", meshProxyPort, meshProxy), ("HAProxy 2.6 (tcp)", haproxyPort, haproxy),
    ]
    var latencies = [UInt64](repeating: 0, count: rate * durationMilliseconds / 1_000 + 1_000)
    var means = Array(repeating: [Double](), count: variants.count)
    var p99s = Array(repeating: [Double](), count: variants.count)
    var proxyCPU = Array(repeating: [Double](), count: variants.count)
    for round in 0..<proxyRounds {
        for index in (round % 2 == 0 ? Array(variants.indices) : variants.indices.reversed()) {
            let before = variants[index].process.map { cpuSeconds($0.processIdentifier) } ?? 0
            let count = latencies.withUnsafeMutableBufferPointer {
                bench_http_fixed_rate(variants[index].port, Int32(connections), Int32(rate), Int32(durationMilliseconds), $0.baseAddress, Int64($0.count))
            }
            guard count > 0 else { throw BenchmarkError(description: "\(variants[index].name): the run failed (\(count))") }
            let after = variants[index].process.map { cpuSeconds($0.processIdentifier) } ?? 0
            let sorted = latencies.prefix(Int(count)).map { Double($0) / 1_000 }.sorted()
            means[index].append(sorted.reduce(0, +) / Double(sorted.count))
            p99s[index].append(sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))])
            proxyCPU[index].append((after - before) / Double(count) * 1e6)
        }
    }
    for (index, variant) in variants.enumerated() {
        report("mean latency, \(variant.name)", "µs", means[index])
        report("p99 latency, \(variant.name)", "µs", p99s[index])
        if variant.process != nil { report("proxy CPU per request, \(variant.name)", "µs", proxyCPU[index]) }
    }
    let meshAdded = zip(means[1], means[0]).map { $0 - $1 }, haproxyAdded = zip(means[2], means[0]).map { $0 - $1 }
    print(String(format: "  => mean latency added: MeshProxy %.1f µs, HAProxy %.1f µs (medians); MeshProxy / HAProxy added %.2f", median(meshAdded),
                 median(haproxyAdded), median(zip(meshAdded, haproxyAdded).map { $0 / $1 })))
    ratio("proxy CPU per request, MeshProxy / HAProxy", proxyCPU[1], proxyCPU[2], goal: "<= 1.00")
    print(String(format: "  MeshProxy resident memory after the runs: %.1f MiB", residentMiB(meshProxy.processIdentifier)))

    // Memory: 30 tenants, idle.
    let tenants = (0..<30).flatMap { ["--tenant", "t\($0)=127.0.0.1:\(18_900 + $0),upstream=127.0.0.1:\(serverPort)"] }
    let idle = try start(meshProxyPath, tenants)
    defer { idle.terminate(); idle.waitUntilExit() }
    try waitForListener(18_929)
    let single = try start(meshProxyPath, ["--tenant", "one=127.0.0.1:18999,upstream=127.0.0.1:\(serverPort)"])
    defer { single.terminate(); single.waitUntilExit() }
    try waitForListener(18_999)
    let thirty = residentMiB(idle.processIdentifier), one = residentMiB(single.processIdentifier)
    print(String(format: "  MeshProxy resident memory, idle: 1 tenant %.1f MiB, 30 tenants %.1f MiB (%.2f MiB per additional tenant)  goal: <= 32 MiB, <= 0.5 MiB per tenant",
                 one, thirty, (thirty - one) / 29))
}
