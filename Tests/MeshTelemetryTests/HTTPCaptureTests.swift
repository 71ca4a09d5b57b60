import Foundation
import MeshKernel
@testable import MeshTelemetry
import MeshTestSupport
import Synchronization
import Testing

/// A keep-alive client that times each request with CLOCK_MONOTONIC (as the
/// kernel's timestamps are), pipelines three requests in one write, and
/// writes one request head in three pieces; prints one JSON line per request.
private let timingClient = #"""
import json, socket, sys, time
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
pending = b""
def read_response():
    global pending
    while b"\r\n\r\n" not in pending: pending += s.recv(65536)
    head, pending = pending.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(pending) < length: pending += s.recv(65536)
    pending = pending[length:]
    return int(head.split(b" ")[1])
for index in range(5):
    start = time.monotonic_ns()
    s.sendall(b"GET /status/200/%d?timed=%d HTTP/1.1\r\nHost: timed\r\n\r\n" % (100 * index, index))
    status = read_response()
    print(json.dumps({"target": "/status/200/%d?timed=%d" % (100 * index, index), "start": start, "end": time.monotonic_ns(), "status": status}), flush=True)
s.sendall(b"".join(b"GET /status/202/3?pipelined=%d HTTP/1.1\r\nHost: p\r\n\r\n" % i for i in range(3)))
statuses = [read_response() for _ in range(3)]
assert statuses == [202, 202, 202], statuses
for piece in (b"PATCH /status/200/4?slow=1 HT", b"TP/1.1\r\nHost: slow\r\nContent-Len", b"gth: 3\r\n\r\nabc"):
    s.sendall(piece); time.sleep(0.02)
assert read_response() == 200
s.close()
"""#

/// A TCP server that reads and discards, and a client that sends it random
/// bytes and a TLS ClientHello: not HTTP.
private let discardServer = #"""
import socket, sys, threading
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(16)
def drain(connection):
    while connection.recv(65536): pass
    connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=drain, args=(connection,), daemon=True).start()
"""#
private let garbageClient = #"""
import os, socket, ssl, sys
port = int(sys.argv[1])
for _ in range(3):
    with socket.create_connection(("127.0.0.1", port)) as s: s.sendall(os.urandom(4096))
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
raw = socket.create_connection(("127.0.0.1", port), timeout=0.5)
try: context.wrap_socket(raw, server_hostname="example")
except Exception: pass
raw.close()
"""#

/// What the test's consumer has seen.
private struct Collected: Sendable {
    var events = 0
    var exchanges: [HTTPExchange] = []
    var statistics = HTTPExchangeAssembler.Statistics()
}

/// Consumes a capture's events into exchanges, counting what it has seen.
private final class Collector: Sendable {
    private final class Store: Sendable {
        let value = Mutex(Collected())
    }

    private let store = Store()
    private let events: RingBufferRecords<SocketIOEvent>
    private let consumer: Task<Void, Never>

    init(_ capture: HTTPCapture) throws {
        let events = try capture.events(pollInterval: .milliseconds(5))
        let store = store
        self.events = events
        consumer = Task {
            var assembler = HTTPExchangeAssembler()
            for await event in events {
                let done = assembler.consume(event)
                let statistics = assembler.statistics
                store.value.withLock { $0.events += 1; $0.exchanges += done; $0.statistics = statistics }
            }
        }
    }

    /// What has been seen so far.
    var snapshot: Collected { store.value.withLock { $0 } }

    /// Whether every event `capture` has sent (heads, bodies, closes) has been consumed.
    func hasConsumedAll(of capture: HTTPCapture) -> Bool {
        guard let counters = try? capture.counters() else { return false }
        return UInt64(snapshot.events) == counters.callsCaptured + counters.callsCounted + counters.closes
    }

    func stop() {
        events.finish()
        consumer.cancel()
    }
}

@Suite("HTTP visibility from the kernel, without a proxy", .kernel, .serialized)
struct HTTPCaptureTests {
    @Test("real clients and servers: every request counted exactly, from both ends, with kernel timing inside the client's")
    func realTraffic() async throws {
        try await withNetworkNamespace { namespace in
            try await withCgroup("telemetry") { root in
                let server = try Cgroup.create("server", under: root)
                let client = try Cgroup.create("client", under: root)
                let stranger = try Cgroup.create("stranger", under: root)
                defer { for cgroup in [server, client, stranger] { try? cgroup.remove() } }

                let capture = try HTTPCapture()
                defer { capture.detach() }
                try capture.watch(server, identity: 100)
                try capture.watch(client, identity: 200)
                let collector = try Collector(capture)
                defer { collector.stop() }

                let web = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(httpServer)' 18080"))
                defer { web.stop() }
                let other = try Background(cgroupCommand(stranger.path, namespace: namespace, "python3 -c '\(httpServer)' 18081"))
                defer { other.stop() }
                let discard = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(discardServer)' 18082"))
                defer { discard.stop() }
                #expect(try await awaitListeners(["18080", "18081", "18082"].map { "127.0.0.1:\($0)" }, in: namespace))

                // curl, keep-alive within each invocation: mixed statuses, methods and sizes.
                let base = "http://127.0.0.1:18080/status"
                let gets = [200, 201, 301, 404, 500, 503, 200, 200].enumerated().map { "\(base)/\($0.element)/\(10 * $0.offset)" }
                let curls = [
                    "curl -s -o /dev/null " + gets.joined(separator: " "),
                    "curl -s -o /dev/null -X POST -d hello=world \(base)/201/2 \(base)/400/2 \(base)/201/2",
                    "curl -s -o /dev/null -I \(base)/200/9 \(base)/404/9",
                    "curl -s -o /dev/null -X DELETE \(base)/204/0",
                    "curl -s -o /dev/null \(base)/200/1048576",   // a 1 MiB body
                    "curl -s -o /dev/null -X PUT --data-binary @/etc/services \(base)/200/5",   // a body larger than one capture
                ]
                // (The clients run on a thread of their own, as the waits below suspend: the
                // collector's task needs the tasks' threads, which a loaded test run keeps busy.)
                let (clientPath, strangerPath) = (client.path, stranger.path)
                let timed = try await offload { () throws -> ProcessResult in
                    for command in curls { try runInCgroup(clientPath, namespace: namespace, command).check() }
                    let timed = try runInCgroup(clientPath, namespace: namespace, "python3 -c '\(timingClient)' 18080").check()
                    // Not counted: a workload that is not watched, and traffic that is not HTTP.
                    try runInCgroup(strangerPath, namespace: namespace, "curl -s -o /dev/null http://127.0.0.1:18081/status/200/5").check()
                    try runInCgroup(clientPath, namespace: namespace, "python3 -c '\(garbageClient)' 18082").check()
                    return timed
                }
                let requestsByCurl = gets.count + 3 + 2 + 1 + 1 + 1
                let requestsByTimingClient = 5 + 3 + 1

                let requests = requestsByCurl + requestsByTimingClient
                // Drained: every event the kernel sent has been consumed.
                let drained = await eventually(timeout: .seconds(15)) {
                    collector.hasConsumedAll(of: capture) && collector.snapshot.exchanges.count >= 2 * requests
                }
                let counters = try capture.counters()
                let result = collector.snapshot
                #expect(drained, "events \(result.events), exchanges \(result.exchanges.count) of \(2 * requests), \(counters), \(result.statistics)")
                #expect(counters.eventsLost == 0 && counters.stateLost == 0)
                #expect(counters.callsIgnored > 0, "the garbage and TLS connections were not even seen")
                #expect(counters.closes > 0, "HTTP connections report their close")

                // Each request once from each end; nothing from the stranger or the garbage.
                let fromServer = result.exchanges.filter { $0.reporter == .server }
                let fromClient = result.exchanges.filter { $0.reporter == .client }
                #expect(fromServer.count == requests)
                #expect(fromClient.count == requests, "\(fromClient.map { "\($0.request.method) \($0.request.target) \($0.status) \($0.connection)" })")
                #expect(fromServer.allSatisfy { $0.identity == 100 && $0.local.port == 18080 })
                #expect(fromClient.allSatisfy { $0.identity == 200 && $0.remote.port == 18080 })
                #expect(result.statistics.invalidHeads == 0)

                // Methods and statuses as sent; the status the path asked for.
                for exchange in result.exchanges where exchange.request.path.hasPrefix("/status/") {
                    let code = Int(exchange.request.path.split(separator: "/")[1]) ?? 0
                    #expect(exchange.status == code, "\(exchange.request.method) \(exchange.request.target) -> \(exchange.status)")
                }
                let methods = Dictionary(grouping: fromServer, by: \.request.method).mapValues(\.count)
                #expect(methods == ["GET": gets.count + 1 + 5 + 3, "POST": 3, "HEAD": 2, "DELETE": 1, "PUT": 1, "PATCH": 1])
                let big = try #require(fromClient.first { $0.request.path == "/status/200/1048576" })
                #expect(big.responseBytes > 1_048_576)
                let put = try #require(fromServer.first { $0.request.method == "PUT" })
                let servicesSize = try FileManager.default.attributesOfItem(atPath: "/etc/services")[.size] as? Int ?? 0
                #expect(put.requestBytes > servicesSize, "the request body is counted")
                #expect(fromServer.contains { $0.request.host == "slow" && $0.request.method == "PATCH" }, "a head written in three pieces")
                #expect(fromServer.filter { $0.request.target.hasPrefix("/status/202/3?pipelined=") }.count == 3)

                // The kernel's timing of each timed request lies within the client's own measurement.
                struct Timed: Decodable { var target: String; var start: UInt64; var end: UInt64; var status: Int }
                let measured = try timed.output.split(separator: "\n").map { try JSONDecoder().decode(Timed.self, from: Data($0.utf8)) }
                #expect(measured.count == 5)
                for sample in measured {
                    let seen = try #require(fromClient.first { $0.request.target == sample.target })
                    #expect(seen.requestStart >= sample.start && seen.responseEnd <= sample.end,
                            "kernel \(seen.requestStart)...\(seen.responseEnd) vs client \(sample.start)...\(sample.end)")
                    #expect(seen.status == sample.status)
                }
            }
        }
    }

    @Test("the kernel's range of watched cgroups: unwatched cgroups inside and outside it are not counted, watched ones at its ends are, unwatching narrows it")
    func watchedRange() async throws {
        try await withNetworkNamespace { namespace in
            try await withCgroup("range") { root in
                // Made in order, so their ids grow: 0, 2 and 4 are watched, 1 and 3 lie inside the range unwatched.
                let workloads = try (0..<6).map { try Cgroup.create("w\($0)", under: root) }
                defer { for cgroup in workloads { try? cgroup.remove() } }
                let capture = try HTTPCapture()
                defer { capture.detach() }
                for index in [0, 2, 4] { try capture.watch(workloads[index], identity: UInt32(1_000 + index)) }
                let collector = try Collector(capture)
                defer { collector.stop() }

                let web = try Background(cgroupCommand(workloads[2].path, namespace: namespace, "python3 -c '\(httpServer)' 18090"))
                defer { web.stop() }
                #expect(try await awaitListeners(["127.0.0.1:18090"], in: namespace))
                /// `count` requests from `workload`'s cgroup, by curl on a thread of its own (the
                /// collector's task needs the tasks' threads).
                func requests(from workload: Int, _ count: Int) async throws {
                    let urls = (0..<count).map { _ in "http://127.0.0.1:18090/status/200/\(workload)" }.joined(separator: " ")
                    let path = workloads[workload].path
                    _ = try await offload { try runInCgroup(path, namespace: namespace, "curl -s -o /dev/null \(urls)").check() }
                }
                /// Waits until the exchanges seen, by reporting identity, are `expected`.
                func expectSeen(_ expected: [UInt32: Int], _ comment: Comment) async {
                    let seen = { Dictionary(grouping: collector.snapshot.exchanges, by: \.identity).mapValues(\.count) }
                    #expect(await eventually(timeout: .seconds(15)) { collector.hasConsumedAll(of: capture) && seen() == expected },
                            "\(comment): \(seen())")
                }
                /// The kernel's range of watched cgroup ids.
                func range() throws -> ClosedRange<UInt64>? {
                    let lowest = try capture.capture.globals.watchedLowest.get(), highest = try capture.capture.globals.watchedHighest.get()
                    return lowest <= highest ? lowest...highest : nil
                }
                let ids = try workloads.map { try $0.id() }
                func span(_ indices: [Int]) -> ClosedRange<UInt64> { indices.map { ids[$0] }.min()!...indices.map { ids[$0] }.max()! }
                #expect(try range() == span([0, 2, 4]))
                for (workload, count) in [(0, 1), (1, 2), (3, 3), (4, 4), (5, 5)] { try await requests(from: workload, count) }
                await expectSeen([1_002: 1 + 2 + 3 + 4 + 5, 1_000: 1, 1_004: 4], "every request from the server; the watched clients' own")

                // Both ends unwatched: the range shrinks to workload 2 alone, which is still seen.
                #expect(try capture.unwatch(workloads[0]))
                #expect(try range() == span([2, 4]))
                #expect(try capture.unwatch(workloads[4]))
                #expect(try !capture.unwatch(workloads[4]))
                #expect(try range() == span([2]))
                for (workload, count) in [(0, 1), (4, 2)] { try await requests(from: workload, count) }
                await expectSeen([1_002: 15 + 1 + 2, 1_000: 1, 1_004: 4], "the unwatched clients' requests from the server only")
                #expect(try capture.unwatch(workloads[2]))
                #expect(try range() == nil, "nothing watched: an empty range")
                #expect(try capture.counters().eventsLost == 0)
            }
        }
    }

    @Test("HTTPS in plaintext through uprobes on OpenSSL: curl against a TLS server, every request from both ends")
    func tlsThroughUprobes() async throws {
        try await withNetworkNamespace { namespace in
            try await withCgroup("tls") { root in
                let server = try Cgroup.create("server", under: root)
                let client = try Cgroup.create("client", under: root)
                defer { for cgroup in [server, client] { try? cgroup.remove() } }
                try await withTemporaryDirectory("tls") { directory in
                    let certificate = directory.appendingPathComponent("cert.pem").path, key = directory.appendingPathComponent("key.pem").path
                    _ = try await offload {
                        try run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate,
                                 "-days", "1", "-subj", "/CN=127.0.0.1"]).check()
                    }

                    let capture = try HTTPCapture()
                    defer { capture.detach() }
                    try capture.watchTLS()
                    try capture.watchTLS()   // once per library
                    try capture.watch(server, identity: 1)
                    try capture.watch(client, identity: 2)
                    let collector = try Collector(capture)
                    defer { collector.stop() }

                    let web = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(httpServer)' 18443 \(certificate) \(key)"))
                    defer { web.stop() }
                    #expect(try await awaitListeners(["127.0.0.1:18443"], in: namespace))
                    let base = "https://127.0.0.1:18443/status", clientPath = client.path
                    // (On a thread of its own: the collector's task needs the tasks' threads.)
                    try await offload {
                        try runInCgroup(clientPath, namespace: namespace,
                                        "curl -sk -o /dev/null \(base)/200/10 \(base)/404/20 \(base)/200/70000 \(base)/503/1").check()
                        try runInCgroup(clientPath, namespace: namespace, "curl -sk -o /dev/null -X POST -d secret=1 \(base)/201/3").check()
                    }

                    let drained = await eventually(timeout: .seconds(15)) {
                        collector.hasConsumedAll(of: capture) && collector.snapshot.exchanges.count >= 10
                    }
                    let counters = try capture.counters()
                    let result = collector.snapshot
                    #expect(drained, "\(result.exchanges.count) exchanges, \(counters), \(result.statistics)")
                    #expect(counters.tlsCalls > 0 && counters.tlsUnmatched == 0)
                    #expect(counters.closes > 0 && counters.stateLost == 0, "HTTPS connections report their close")
                    for reporter in [HTTPExchange.Reporter.client, .server] {
                        let seen = result.exchanges.filter { $0.reporter == reporter }
                        #expect(seen.map(\.status).sorted() == [200, 200, 201, 404, 503], "\(reporter)")
                        #expect(seen.allSatisfy { $0.remote.port == 18443 || $0.local.port == 18443 })
                    }
                    let large = try #require(result.exchanges.first { $0.reporter == .client && $0.request.path == "/status/200/70000" })
                    #expect(large.responseBytes > 70_000, "the body counted in plaintext bytes")
                    #expect(result.statistics.invalidHeads == 0)
                }
            }
        }
    }
}
