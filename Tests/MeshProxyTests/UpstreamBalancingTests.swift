import Foundation
import MeshKernel
import MeshProxy
import MeshTestSupport
import NIOCore
import Testing

/// HTTP mode's upstream side over real sockets: pooled keep-alive
/// connections, the balancing policies, and retries.
@Suite("MeshProxy upstream pooling, balancing and retries", .serialized)
struct UpstreamBalancingTests {
    private let loopback = IPAddress.loopback

    private func tenant(_ name: String, port: UInt16, _ cluster: HTTPCluster) -> TenantConfiguration {
        TenantConfiguration(name: name, listener: Endpoint(loopback, port: port),
                            mode: .http(HTTPRouting(routes: [HTTPRoute(cluster: "backend")], clusters: ["backend": cluster])))
    }

    @Test("requests from many client connections share pooled upstream connections; without pooling each makes its own; a tenant whose listener moves keeps its pool")
    func pooling() async throws {
        let pooled = try await DelayedHTTPServer(port: 17_127, serviceTime: .milliseconds(1), name: "P")
        let unpooled = try await DelayedHTTPServer(port: 17_128, serviceTime: .milliseconds(1), name: "U")
        defer { Task { await pooled.stop(); await unpooled.stop() } }
        let configuration = ProxyConfiguration(tenants: [
            tenant("pooled", port: 17_077, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_127)])),
            tenant("unpooled", port: 17_078, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_128)], maxIdleConnectionsPerEndpoint: 0)),
        ])
        try await withProxy(configuration) { proxy in
            // 20 clients one after the other, each on a connection of its own.
            for (port, name) in [(17_077, "P"), (17_078, "U")] {
                let answers = try await offload {
                    try run(["sh", "-c", "for i in $(seq 1 20); do curl -s http://127.0.0.1:\(port)/$i; done"]).check().output
                }
                #expect(answers == String(repeating: name, count: 20))
            }
            #expect(pooled.connectionsAccepted == 1, "pooled: \(pooled.connectionsAccepted) upstream connections")
            #expect(unpooled.connectionsAccepted == 20, "unpooled: \(unpooled.connectionsAccepted) upstream connections")
            // Four clients at once need four upstream connections, which then all stay for later requests.
            let burst = try await httpLoad(port: 17_077, connections: 4, requests: 25)
            #expect(burst.statuses == [200: 100])
            #expect(pooled.connectionsAccepted <= 5)
            // The listener moves: the tenant's requests on the new one still go over the connections it kept.
            let kept = pooled.connectionsAccepted
            try await proxy.apply(ProxyConfiguration(tenants: [
                tenant("pooled", port: 17_047, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_127)])),
                tenant("unpooled", port: 17_078, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_128)], maxIdleConnectionsPerEndpoint: 0)),
            ]))
            let moved = try await offload {
                try run(["sh", "-c", "for i in $(seq 1 5); do curl -s http://127.0.0.1:17047/$i; done"]).check().output
            }
            #expect(moved == String(repeating: "P", count: 5))
            #expect(pooled.connectionsAccepted == kept, "\(pooled.connectionsAccepted - kept) new upstream connections after the move")
        }
    }

    @Test("least-request sends most requests to the endpoint that answers fastest; round robin splits them evenly")
    func leastRequest() async throws {
        let fastA = try await DelayedHTTPServer(port: 17_129, serviceTime: .milliseconds(2), name: "fast")
        let slowA = try await DelayedHTTPServer(port: 17_130, serviceTime: .milliseconds(100), name: "slow")
        let fastB = try await DelayedHTTPServer(port: 17_131, serviceTime: .milliseconds(2), name: "fast")
        let slowB = try await DelayedHTTPServer(port: 17_132, serviceTime: .milliseconds(100), name: "slow")
        defer { Task { for server in [fastA, slowA, fastB, slowB] { await server.stop() } } }
        let configuration = ProxyConfiguration(tenants: [
            tenant("least", port: 17_079, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_129), Endpoint(loopback, port: 17_130)],
                                                      balancing: .leastRequest)),
            tenant("turns", port: 17_080, HTTPCluster(endpoints: [Endpoint(loopback, port: 17_131), Endpoint(loopback, port: 17_132)])),
        ])
        try await withProxy(configuration) { _ in
            let least = try await httpLoad(port: 17_079, connections: 4, requests: 40)
            let turns = try await httpLoad(port: 17_080, connections: 4, requests: 40)
            #expect(least.statuses == [200: 160] && turns.statuses == [200: 160])
            // Round robin gives the slow endpoint half; least-request sends it a request only while it
            // holds no more than the fast one, so at most half of that (8 to 24 measured alone).
            #expect(least.bodies["slow", default: 0] <= 40, "\(least.bodies)")
            #expect(turns.bodies == ["fast": 80, "slow": 80], "\(turns.bodies)")
        }
    }

    @Test("a consistent hash keeps each key on its endpoint; when an endpoint goes, only its keys move")
    func consistentHash() async throws {
        let servers = try await [("A", 17_133), ("B", 17_134), ("C", 17_135)].asyncMap { name, port in
            try await DelayedHTTPServer(port: port, serviceTime: .milliseconds(1), name: name)
        }
        defer { Task { for server in servers { await server.stop() } } }
        func cluster(_ ports: [UInt16]) -> HTTPCluster {
            HTTPCluster(endpoints: ports.map { Endpoint(loopback, port: $0) }, balancing: .consistentHash(.header("x-user")))
        }
        /// Each user's endpoint, asked twice.
        func placement() async throws -> [String] {
            let output = try await offload {
                try run(["sh", "-c", "for i in $(seq 1 60); do curl -s -H \"x-user: user$i\" http://127.0.0.1:17081/; curl -s -H \"x-user: user$i\" http://127.0.0.1:17081/; echo; done"])
                    .check().output
            }
            return output.split(separator: "\n").map(String.init)
        }
        try await withProxy(ProxyConfiguration(tenants: [tenant("sticky", port: 17_081, cluster([17_133, 17_134, 17_135]))])) { proxy in
            let before = try await placement()
            #expect(before.count == 60)
            #expect(before.allSatisfy { $0 == "AA" || $0 == "BB" || $0 == "CC" }, "a user moved between two requests: \(before)")
            for name in ["AA", "BB", "CC"] { #expect(before.filter { $0 == name }.count >= 8, "uneven: \(before)") }
            // C goes: its users spread over A and B; everyone else stays where they were.
            try await proxy.apply(ProxyConfiguration(tenants: [tenant("sticky", port: 17_081, cluster([17_133, 17_134]))]))
            let after = try await placement()
            for (old, new) in zip(before, after) {
                if old == "CC" { #expect(new == "AA" || new == "BB") } else { #expect(new == old, "a user of \(old) moved to \(new)") }
            }
        }
    }

    @Test("a GET whose upstream connection breaks before any answer is sent again to another endpoint; a POST with a body is not (502)")
    func retries() async throws {
        let broken = try Background(["python3", "-c", closingServer, "17136"])
        defer { broken.stop() }
        let good = try await DelayedHTTPServer(port: 17_137, serviceTime: .milliseconds(1), name: "good")
        defer { Task { await good.stop() } }
        #expect(try await awaitListeners(["127.0.0.1:17136"], timeout: .seconds(10)))
        // Without outlier detection, so the broken endpoint keeps its turns.
        let cluster = HTTPCluster(endpoints: [Endpoint(loopback, port: 17_136), Endpoint(loopback, port: 17_137)], retries: 1,
                                  outlierDetection: nil)
        try await withProxy(ProxyConfiguration(tenants: [tenant("retry", port: 17_082, cluster)])) { proxy in
            // A retry takes the next turn too, so each GET meets the broken endpoint first, and all are answered.
            let gets = try await offload {
                try run(["sh", "-c", "for i in $(seq 1 6); do curl -s http://127.0.0.1:17082/$i; echo; done"]).check().output
            }
            #expect(gets == String(repeating: "good\n", count: 6))
            #expect(proxy.statistics("retry")?.retriedRequests == 6)
            // POSTs with a body are never sent twice: the one that meets the broken endpoint is 502.
            let posts = try await offload {
                try run(["sh", "-c", "for i in 1 2; do curl -s -o /dev/null -w '%{http_code} ' -d payload http://127.0.0.1:17082/p; done"]).check().output
            }
            #expect(posts.split(separator: " ").sorted() == ["200", "502"], "\(posts)")
            #expect(proxy.statistics("retry")?.retriedRequests == 6)
        }
    }

    @Test("retries are bounded: with every endpoint breaking its connections before answering, a GET, PUT or DELETE without a body is tried once and then retries times, each time on a connection of its own, and answered 502; PATCH and POST are tried once")
    func retriesBounded() async throws {
        let ports: [UInt16] = [17_245, 17_246, 17_247]
        let broken = try await ports.asyncMap { try await startServer(closingServer, named: "closingServer", port: Int($0)) }
        defer { for server in broken { server.stop() } }
        let cluster = HTTPCluster(endpoints: ports.map { Endpoint(loopback, port: $0) }, retries: 3, outlierDetection: nil)
        try await withProxy(ProxyConfiguration(tenants: [tenant("bounded", port: 17_248, cluster)])) { proxy in
            var expectedRetries = 0
            for (method, retried) in [("GET", true), ("PUT", true), ("DELETE", true), ("PATCH", false), ("POST", false)] {
                let status = try await offload {
                    try run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "http://127.0.0.1:17248/x"]).check().output
                }
                #expect(status == "502", "\(method): \(status)")
                expectedRetries += retried ? cluster.retries : 0
                #expect(proxy.statistics("bounded")?.retriedRequests == expectedRetries, "\(method)")
            }
        }
        // Every try was a connection an endpoint accepted: 4 for each of the three methods retried, 1 for each of the others.
        let accepted = broken.map { $0.stop() }.joined().split(separator: "\n").filter { $0 == "accepted" }.count
        #expect(accepted == 3 * (1 + cluster.retries) + 2)
    }

    @Test("outlier detection takes an endpoint that keeps failing out of the picks, and brings it back after its time")
    func outlierDetection() async throws {
        let broken = try Background(["python3", "-c", closingServer, "17138"])
        defer { broken.stop() }
        let good = try await DelayedHTTPServer(port: 17_139, serviceTime: .milliseconds(1), name: "good")
        defer { Task { await good.stop() } }
        #expect(try await awaitListeners(["127.0.0.1:17138"], timeout: .seconds(10)))
        let cluster = HTTPCluster(endpoints: [Endpoint(loopback, port: 17_138), Endpoint(loopback, port: 17_139)], retries: 1,
                                  outlierDetection: .init(consecutiveFailures: 2, ejectionDuration: .seconds(6)))
        try await withProxy(ProxyConfiguration(tenants: [tenant("outlier", port: 17_083, cluster)])) { proxy in
            func requests(_ count: Int) async throws -> String {
                try await offload {
                    try run(["sh", "-c", "for i in $(seq 1 \(count)); do curl -s -o /dev/null -w '%{http_code} ' -d x http://127.0.0.1:17083/$i; done"]).check().output
                }
            }
            // POSTs are not retried, so each one that meets the broken endpoint is a 502: two of them take it out.
            let first = try await requests(4)
            #expect(first == "502 200 502 200 ", "\(first)")
            #expect(proxy.statistics("outlier")?.endpointEjections == 1)
            // Out: every request goes to the good endpoint. (Six seconds out: far more than these requests take, even late.)
            #expect(try await requests(6) == String(repeating: "200 ", count: 6))
            // Its time is up: it is picked again (and fails again).
            try await Task.sleep(for: .milliseconds(6_100))   // the ejection's own duration, not a wait for a condition
            let back = try await requests(2)
            #expect(back.contains("502"), "\(back)")
        }
    }
}

extension Sequence {
    /// `map` with an async transform, in order.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
