import Foundation
import MeshKernel
import Testing

/// A proxy that knows nothing of the mesh: it accepts one connection, asks
/// the kernel for the original destination with getsockopt(SOL_IP,
/// SO_ORIGINAL_DST) as HAProxy and Envoy do, and reports it with the client's address.
private let originalDestinationProxy = #"""
import socket, struct, sys
listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1]))); listener.listen()
print("listening", flush=True)
connection, client = listener.accept()
raw = connection.getsockopt(socket.SOL_IP, 80, 16)
port, address = struct.unpack("!2xH4s8x", raw)
connection.sendall(b"original %s:%d\n" % (socket.inet_ntoa(address).encode(), port))
with open(sys.argv[2], "w") as report:
    report.write("client %s:%d original %s:%d\n" % (client[0], client[1], socket.inet_ntoa(address), port))
connection.recv(1)   # hold the connection until the client closes it
"""#

@Suite("Redirect to the per-node proxy at the socket level", .kernel, .serialized)
struct ProxyRedirectTests {
    @Test("a workload's connect() lands in an unmodified HAProxy, which reaches the original destination via SO_ORIGINAL_DST")
    func haproxyFollowsOriginalDestination() throws {
        try withNetworkNamespace { namespace in
            try run(["ip", "netns", "exec", namespace, "ip", "addr", "add", "10.96.0.10/32", "dev", "lo"]).check()
            try run(["ip", "netns", "exec", namespace, "ip", "addr", "add", "10.96.1.20/32", "dev", "lo"]).check()
            try withCgroup("mesh") { mesh in
                let client = try Cgroup.create("client", under: mesh)
                let proxy = try Cgroup.create("proxy", under: mesh)
                let stranger = try Cgroup.create("stranger", under: mesh)
                defer { for cgroup in [client, proxy, stranger] { try? cgroup.remove() } }

                let redirect = try ProxyRedirect(attachingTo: mesh)
                defer { redirect.detach() }
                try redirect.register(workload: client, tenant: 7, identity: 100)
                try redirect.register(proxy: proxy)
                try redirect.addRule(tenant: 7, destination: CIDR("10.96.0.10/32"), port: 8080, proxy: Endpoint(.loopback, port: 15001))
                try redirect.addRule(tenant: 7, destination: CIDR("10.96.1.0/24"), proxy: Endpoint(.loopback, port: 15002))

                // The real service, outside the mesh, on an address only this namespace has.
                let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueName("www"))
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(at: directory) }
                try "hello through the mesh\n".write(to: directory.appendingPathComponent("hello.txt"), atomically: true, encoding: .utf8)
                let config = directory.appendingPathComponent("haproxy.cfg")
                try """
                    global
                        maxconn 64
                    defaults
                        mode tcp
                        timeout connect 3s
                        timeout client 10s
                        timeout server 10s
                    listen mesh_redirect
                        bind 127.0.0.1:15001
                        server original 0.0.0.0:0

                    """.write(to: config, atomically: true, encoding: .utf8)
                let upstream = try Background(["ip", "netns", "exec", namespace, "python3", "-m", "http.server", "8080",
                                               "--bind", "10.96.0.10", "--directory", directory.path])
                defer { upstream.stop() }
                let haproxy = try Background(cgroupCommand(proxy.path, namespace: namespace, "haproxy -db -f \(config.path)"))
                defer { haproxy.stop() }
                let ready = try eventually(timeout: .seconds(10)) {
                    let listening = try run(["ip", "netns", "exec", namespace, "ss", "-ltn"]).output
                    return listening.contains("127.0.0.1:15001") && listening.contains("10.96.0.10:8080")
                }
                #expect(ready, "upstream: \(ready ? "" : upstream.stop()) haproxy: \(ready ? "" : haproxy.stop())")

                // The workload asks for the service; HAProxy answers with the service's file.
                let fetched = try runInCgroup(client.path, namespace: namespace, "curl -s --max-time 5 http://10.96.0.10:8080/hello.txt").check()
                #expect(fetched.output == "hello through the mesh\n")
                var counters = try redirect.counters()
                #expect(counters.redirected == 1)
                #expect(counters.recorded == 1)
                #expect(counters.originalDestinationAnswered >= 1, "HAProxy did not get SO_ORIGINAL_DST from the datapath")
                #expect(counters.proxyBypassed >= 1, "HAProxy's own connection must not be redirected")

                // A dual-stack client (an IPv6 socket, IPv4-mapped address) is redirected the same way.
                let mapped = try runInCgroup(client.path, namespace: namespace, "curl -s --max-time 5 http://[::ffff:10.96.0.10]:8080/hello.txt").check()
                #expect(mapped.output == "hello through the mesh\n")
                counters = try redirect.counters()
                #expect(counters.redirected == 2 && counters.recorded == 2)

                // An unregistered workload goes straight to the service.
                let direct = try runInCgroup(stranger.path, namespace: namespace, "curl -s --max-time 5 http://10.96.0.10:8080/hello.txt").check()
                #expect(direct.output == "hello through the mesh\n")
                #expect(try redirect.counters().redirected == counters.redirected)

                // A proxy written without the mesh in mind reads the original destination,
                // and the Swift API finds the same connection by its 4-tuple.
                let reportFile = directory.appendingPathComponent("mini-report").path
                let mini = try Background(cgroupCommand(proxy.path, namespace: namespace, "python3 -c '\(originalDestinationProxy)' 15002 \(reportFile)"))
                defer { mini.stop() }
                #expect(try eventually(timeout: .seconds(10)) { try run(["ip", "netns", "exec", namespace, "ss", "-ltn"]).output.contains("127.0.0.1:15002") })
                // The client keeps its connection open (reading until EOF) while the test looks it up.
                let received = directory.appendingPathComponent("caller-received").path
                let caller = try Background(cgroupCommand(client.path, namespace: namespace,
                    "python3 -c 'import socket, sys; s = socket.create_connection((\"10.96.1.20\", 9000)); open(sys.argv[1], \"w\").write(s.recv(100).decode()); s.recv(1)' \(received)"))
                #expect(eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: reportFile) && ((try? String(contentsOfFile: reportFile, encoding: .utf8))?.hasSuffix("\n") ?? false) })
                let report = try String(contentsOfFile: reportFile, encoding: .utf8)
                #expect(report.contains("original 10.96.1.20:9000"))
                let fields = report.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == ":" })
                let clientIndex = try #require(fields.firstIndex(of: "client"))
                let clientEndpoint = Endpoint(.v4(try IPv4Address(String(fields[clientIndex + 1]))), port: try #require(UInt16(fields[clientIndex + 2])))
                #expect(try redirect.originalDestination(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15002))
                        == Endpoint(.v4(try IPv4Address("10.96.1.20")), port: 9000))
                // The client got the proxy's answer; once the connection is gone, so is its record.
                #expect(eventually { (try? String(contentsOfFile: received, encoding: .utf8)) == "original 10.96.1.20:9000\n" })
                caller.stop()
                mini.stop()
                #expect(try eventually { try redirect.originalDestination(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15002)) == nil })
                counters = try redirect.counters()
                #expect(counters.redirected == 3 && counters.recordFailures == 0)
            }
        }
    }

    @Test("bad rules are refused with typed errors and existing rules keep working", .kernel)
    func badInput() throws {
        try withCgroup("bad") { mesh in
            let redirect = try ProxyRedirect(attachingTo: mesh)
            defer { redirect.detach() }
            let proxy = Endpoint(.loopback, port: 15001)
            try redirect.addRule(tenant: 1, destination: CIDR("10.0.0.0/8"), proxy: proxy)
            for text in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0/8", "ten.0.0.0/8", "10.0.0.0/8/1", "300.0.0.0/8"] {
                let error = #expect(throws: BPFError.self, "\(text)") { try IPv4CIDR(text) }
                #expect(error?.code == .invalidArgument)
            }
            #expect(try #require(throws: BPFError.self) { try IPv4CIDR("10.0.0.1/8") }.detail?.contains("did you mean 10.0.0.0/8") == true)
            let zeroPort = try #require(throws: BPFError.self) {
                try redirect.addRule(tenant: 1, destination: CIDR("10.1.0.0/16"), port: 0, proxy: proxy)
            }
            #expect(zeroPort.code == .invalidArgument)
            let zeroProxy = try #require(throws: BPFError.self) {
                try redirect.addRule(tenant: 1, destination: CIDR("10.1.0.0/16"), proxy: Endpoint(.loopback, port: 0))
            }
            #expect(zeroProxy.code == .invalidArgument)
            // The first rule is still there and can be removed exactly once.
            #expect(try redirect.datapath.maps.redirectRules.keys().count == 1)
            #expect(try redirect.removeRule(tenant: 1, destination: CIDR("10.0.0.0/8")))
            #expect(try !redirect.removeRule(tenant: 1, destination: CIDR("10.0.0.0/8")))
        }
    }
}
