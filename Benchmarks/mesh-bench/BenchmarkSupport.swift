// Helpers the benchmark sections share: peer processes, readiness, percentiles.
import CBenchBaseline
import Foundation

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
