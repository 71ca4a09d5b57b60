// Helpers the benchmark sections share: peer processes, cgroups, readiness,
// the fixed-rate HTTP load, percentiles.
import CBenchBaseline
import Foundation
import MeshKernel

/// Starts a peer process; its output is discarded unless `quiet` is false.
func start(_ path: String, _ arguments: [String], quiet: Bool = true) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    if quiet {
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
    }
    try process.run()
    return process
}

extension Process {
    /// Terminates the process and waits for it.
    func stop() {
        terminate()
        waitUntilExit()
    }
}

/// Runs `body` with this process in `cgroup` (``Cgroup/withCurrentProcess(_:)``), or where it is for nil.
func inside<T>(_ cgroup: Cgroup?, _ body: () throws -> T) throws -> T {
    try cgroup?.withCurrentProcess(body) ?? body()
}

/// The benchmarks' HTTP load: the C client sends `rate` requests/s over
/// `connections` keep-alive connections to 127.0.0.1:`port` for
/// `milliseconds`. Each request's latency in µs, measured from its scheduled
/// start (no coordinated omission), in the order sent.
func fixedRateLatencies(port: UInt16, milliseconds: Int, rate: Int = 10_000, connections: Int = 4) throws -> [Double] {
    var latencies = [UInt64](repeating: 0, count: rate * milliseconds / 1_000 + 1_000)
    let count = latencies.withUnsafeMutableBufferPointer {
        bench_http_fixed_rate(port, Int32(connections), Int32(rate), Int32(milliseconds), $0.baseAddress, Int64($0.count))
    }
    guard count > 0 else { throw BenchmarkError(description: "fixed-rate run against port \(port) failed: \(Errno(rawValue: Int32(-count)))") }
    return latencies.prefix(Int(count)).map { Double($0) / 1_000 }
}

/// Waits (up to 3 s) until an HTTP server on 127.0.0.1:`port` answers a request.
func waitForHTTPServer(_ port: UInt16) throws {
    for _ in 0..<300 {
        if bench_http_closed_loop(port, 1) > 0 { return }
        usleep(10_000)
    }
    throw BenchmarkError(description: "nothing answers HTTP on port \(port)")
}

/// The value at `fraction` (0.99 for p99) of ascending `sorted` values.
func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
}
