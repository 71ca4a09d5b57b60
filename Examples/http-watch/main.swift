// http-watch: HTTP metrics of one workload, live, with no proxy in the path.
//
//   swift run http-watch /sys/fs/cgroup/my-workload [seconds]
//
// Watches the TCP traffic of the processes in that cgroup (plaintext and,
// through OpenSSL, HTTPS) and prints, every second, the requests it served or
// made by method and status with their median and slowest latency.
import Foundation
import MeshKernel
import MeshTelemetry
import Synchronization

guard CommandLine.arguments.count >= 2 else {
    FileHandle.standardError.write(Data("usage: http-watch CGROUP-PATH [SECONDS]\n".utf8))
    exit(2)
}
let seconds = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 10 : 10
let window = Mutex<[String: [Duration]]>([:])   // "GET 200 server" -> latencies in this second

do {
    let capture = try HTTPCapture()
    defer { capture.detach() }                           // nothing stays attached after exit
    try capture.watch(Cgroup(path: CommandLine.arguments[1]))
    try? capture.watchTLS()                              // HTTPS too, where OpenSSL 3 is installed
    let exchanges = try capture.exchanges()
    let reader = Task {
        for await exchange in exchanges {
            let key = "\(exchange.request.method) \(exchange.status) \(exchange.reporter)"
            window.withLock { $0[key, default: []].append(exchange.duration) }
        }
    }
    for second in 1...seconds {
        try await Task.sleep(for: .seconds(1))
        let snapshot = window.withLock { current in defer { current = [:] }; return current }
        print("— second \(second): \(snapshot.values.map(\.count).reduce(0, +)) requests")
        for (key, latencies) in snapshot.sorted(by: { $0.key < $1.key }) {
            let sorted = latencies.sorted()
            print("  \(key.padding(toLength: 24, withPad: " ", startingAt: 0)) \(sorted.count) req/s, median \(sorted[sorted.count / 2]), slowest \(sorted.last!)")
        }
    }
    let counters = try capture.counters()
    print("kernel: \(counters.callsCaptured) heads copied, \(counters.callsCounted) body calls counted, \(counters.callsIgnored) non-HTTP calls ignored, \(counters.eventsLost) events lost")
    exchanges.finish()
    await reader.value
} catch {
    FileHandle.standardError.write(Data("http-watch: \(error)\n".utf8))
    exit(1)
}
