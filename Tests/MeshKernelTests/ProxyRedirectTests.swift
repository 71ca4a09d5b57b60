import Foundation
import MeshKernel
import MeshTestSupport
import Synchronization
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
# (The report first: once the client has its answer, the report is there to read.)
with open(sys.argv[2], "w") as report:
    report.write("client %s:%d original %s:%d\n" % (client[0], client[1], socket.inet_ntoa(address), port))
connection.sendall(b"original %s:%d\n" % (socket.inet_ntoa(address).encode(), port))
connection.recv(1)   # hold the connection until the client closes it
"""#

/// The client endpoint in a report of `originalDestinationProxy` ("client <address>:<port> original ...").
private func clientEndpoint(inReport report: String) throws -> Endpoint? {
    let fields = report.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == ":" })
    guard let index = fields.firstIndex(of: "client"), index + 2 < fields.count, let port = UInt16(fields[index + 2]) else { return nil }
    return Endpoint(.v4(try IPv4Address(String(fields[index + 1]))), port: port)
}

/// A forwarding proxy that knows nothing of the mesh: for each accepted
/// connection it reads the original destination (SOL_IP or, on an IPv6
/// listener, SOL_IPV6), connects there, and answers the client with
/// "<original address> <original port> <what upstream said>".
private let forwardingProxy = #"""
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listener = socket.socket(family); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port)); listener.listen(64)
while True:
    connection, client = listener.accept()
    try:
        if family == socket.AF_INET6:
            raw = connection.getsockopt(socket.IPPROTO_IPV6, 80, 28)
            original = (socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0])
        else:
            raw = connection.getsockopt(socket.SOL_IP, 80, 16)
            original = (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
        upstream = socket.create_connection(original, timeout=5)
        answer = upstream.recv(100).decode(); upstream.close()
        connection.sendall(("%s %d %s" % (original[0], original[1], answer)).encode())
    except OSError as error:
        connection.sendall(("error %s" % error).encode())
    connection.close()
"""#

/// Servers that answer every TCP connection with their own address, one per
/// `address:port` argument.
private let nameServers = #"""
import selectors, socket, sys
selector = selectors.DefaultSelector()
for argument in sys.argv[1:]:
    address, port = argument.rsplit(":", 1)
    address = address.strip("[]")
    server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind((address, int(port))); server.listen(64)
    selector.register(server, selectors.EVENT_READ, address)
while True:
    for key, _ in selector.select():
        connection, _ = key.fileobj.accept(); connection.sendall(key.data.encode()); connection.close()
"""#

/// Connects `count` times to `address port` and prints each answer on a line.
private let answerCollector = #"""
import socket, sys
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as connection:
        print(connection.recv(200).decode(), flush=True)
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
                try withTemporaryDirectory("www") { directory in
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
                    let ready = try waitForListeners(["127.0.0.1:15001", "10.96.0.10:8080"], in: namespace)
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
                    #expect(try waitForListeners(["127.0.0.1:15002"], in: namespace))
                    // The client keeps its connection open (reading until EOF) while the test looks it up.
                    let received = directory.appendingPathComponent("caller-received").path
                    let caller = try Background(cgroupCommand(client.path, namespace: namespace,
                        "python3 -c 'import socket, sys; s = socket.create_connection((\"10.96.1.20\", 9000)); open(sys.argv[1], \"w\").write(s.recv(100).decode()); s.recv(1)' \(received)"))
                    #expect(eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: reportFile) && ((try? String(contentsOfFile: reportFile, encoding: .utf8))?.hasSuffix("\n") ?? false) })
                    let report = try String(contentsOfFile: reportFile, encoding: .utf8)
                    #expect(report.contains("original 10.96.1.20:9000"))
                    let clientEndpoint = try #require(try clientEndpoint(inReport: report))
                    #expect(try redirect.originalDestination(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15002))
                            == Endpoint(.v4(try IPv4Address("10.96.1.20")), port: 9000))
                    // The record names the workload that connected, for proxies that authorize by identity.
                    let recorded = try redirect.connection(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15002))
                    #expect(recorded?.sourceIdentity == 100 && recorded?.sourceTenant == 7, "\(String(describing: recorded))")
                    // The client got the proxy's answer; once the connection is gone, so is its record.
                    #expect(eventually { (try? String(contentsOfFile: received, encoding: .utf8)) == "original 10.96.1.20:9000\n" })
                    caller.stop()
                    mini.stop()
                    #expect(try eventually { try redirect.originalDestination(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15002)) == nil })
                    counters = try redirect.counters()
                    #expect(counters.redirected == 3 && counters.recordFailures == 0)

                    // A connection that was not redirected never inherits a record left for its 4-tuple: its SYN at
                    // the proxy clears it. (A stale entry, planted here, as one left behind would be; looked up while
                    // the connection is open, before its close could remove the entry.)
                    let staleClient = Endpoint(.loopback, port: 47_113), holder = Endpoint(.loopback, port: 15_003)
                    let stale = ProxyRedirectObject.ProxiedConnection(
                        clientAddress: staleClient.address.networkOrderWords, proxyAddress: holder.address.networkOrderWords,
                        clientPort: staleClient.port, proxyPort: holder.port)
                    try redirect.datapath.maps.originalDestinations.insert(
                        .init(original: .init(address: IPAddress.loopback.networkOrderWords, port: UInt16(9).bigEndian), sourceIdentity: 1, sourceTenant: 1,
                              clientCookie: 0),
                        for: stale)
                    #expect(try redirect.originalDestination(client: staleClient, proxy: holder) != nil)
                    let holding = try Background(cgroupCommand(proxy.path, namespace: namespace,
                        "python3 -c 'import socket; l = socket.create_server((\"127.0.0.1\", 15003)); c, _ = l.accept(); c.recv(1)'"))
                    defer { holding.stop() }
                    #expect(try waitForListeners(["127.0.0.1:15003"], in: namespace))
                    let connected = directory.appendingPathComponent("plain-connected").path
                    let plain = try Background(cgroupCommand(stranger.path, namespace: namespace,
                        "python3 -c 'import socket, sys; s = socket.socket(); s.bind((\"127.0.0.1\", 47113)); s.connect((\"127.0.0.1\", 15003)); open(sys.argv[1], \"w\").write(\"yes\"); s.recv(1)' \(connected)"))
                    defer { plain.stop() }
                    #expect(eventually(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: connected) })
                    #expect(try redirect.originalDestination(client: staleClient, proxy: holder) == nil)
                    #expect(try redirect.counters().recorded == counters.recorded)
                    plain.stop()
                    holding.stop()

                    // Unregistering the proxy takes the proxy side's programs off its cgroup (waited
                    // for: a process the suite forks meanwhile holds the links until it execs).
                    #expect(try !proxy.attachedProgramIDs(.cgroupInetIngress).isEmpty)
                    try redirect.unregister(proxy)
                    for type in [AttachType.cgroupInetIngress, .cgroupSockOps, .cgroupGetsockopt] {
                        #expect(try eventually { try proxy.attachedProgramIDs(type).isEmpty }, "\(type) still attached")
                    }
                }
            }
        }
    }

    /// A ``RedirectedMesh`` (with the given capacities, the client registered
    /// as `tenant` and `identity`), handed to `body` in parts.
    private func withRedirect(_ tag: String, tenant: UInt32, identity: UInt32, ruleCapacity: Int = 4_096, connectionCapacity: Int = 65_536,
                              _ body: (_ namespace: String, _ mesh: Cgroup, _ client: Cgroup, _ proxy: Cgroup, _ redirect: ProxyRedirect) throws -> Void) throws {
        try withRedirectedMesh(tag, tenant: tenant, identity: identity, ruleCapacity: ruleCapacity, connectionCapacity: connectionCapacity) { mesh in
            try body(mesh.namespace, mesh.cgroup, mesh.client, mesh.proxy, mesh.redirect)
        }
    }

    /// A forwarding proxy (`forwardingProxy`) in `proxy`'s cgroup on `listen`, once it listens.
    private func startForwarder(_ namespace: String, proxy: Cgroup, listen: Endpoint) throws -> Background {
        let forwarder = try Background(cgroupCommand(proxy.path, namespace: namespace,
                                                     "python3 -c '\(forwardingProxy)' \(listen.address) \(listen.port)"))
        #expect(try waitForListeners([listen.description], in: namespace))
        return forwarder
    }

    /// Addresses on the namespace's loopback, a forwarding proxy in `proxy`'s
    /// cgroup on `listen`, and name servers on `servers`, until `body` returns.
    private func withProxyAndServers<R>(_ namespace: String, proxy: Cgroup, listen: Endpoint, servers: [Endpoint], _ body: () throws -> R) throws -> R {
        for server in servers {
            let family = server.address.isIPv4 ? ["ip", "addr", "add", "\(server.address)/32"] : ["ip", "-6", "addr", "add", "\(server.address)/128"]
            let result = try run(["ip", "netns", "exec", namespace] + family + ["dev", "lo"] + (server.address.isIPv4 ? [] : ["nodad"]))
            #expect(result.status == 0 || result.output.contains("File exists"))
        }
        let names = try Background(["ip", "netns", "exec", namespace, "python3", "-c", nameServers] + servers.map(\.description))
        defer { names.stop() }
        #expect(try waitForListeners(servers.map(\.description), in: namespace))
        let forwarder = try startForwarder(namespace, proxy: proxy, listen: listen)
        defer { forwarder.stop() }
        return try body()
    }

    @Test("the records' table pinned for a proxy in another process opens from its pin and reads what the datapath keeps, and goes on with the table of a restarted agent that replaces the pin; no pin, a second pin of the same name (unless replacing), or another map pinned under its name is a typed error")
    func recordsFromPin() throws {
        try withCgroup("recpin") { mesh in
            let redirect = try ProxyRedirect(attachingTo: mesh)
            defer { redirect.detach() }
            try withPinFolder { folder in
                let missing = try #require(throws: BPFError.self) { try RedirectRecords(pinnedIn: folder) }
                #expect("\(missing)".contains(RedirectRecords.pinName), "\(missing)")
                try redirect.pinRecords(in: folder)
                let records = try RedirectRecords(pinnedIn: folder)
                let client = Endpoint(.loopback, port: 47_114), proxy = Endpoint(.loopback, port: 15_004)
                #expect(try records.connection(client: client, proxy: proxy) == nil)
                // A record the datapath keeps (planted here as its proxy side would), read through the pin.
                try redirect.datapath.maps.originalDestinations.insert(
                    .init(original: .init(address: IPAddress.loopback.networkOrderWords, port: UInt16(9).bigEndian), sourceIdentity: 42, sourceTenant: 4,
                          clientCookie: 0),
                    for: .init(clientAddress: client.address.networkOrderWords, proxyAddress: proxy.address.networkOrderWords,
                               clientPort: client.port, proxyPort: proxy.port))
                #expect(try records.connection(client: client, proxy: proxy)
                        == RedirectedConnection(originalDestination: Endpoint(.loopback, port: 9), sourceIdentity: 42, sourceTenant: 4))
                // Pinned again: an error, unless replacing.
                let twice = try #require(throws: BPFError.self) { try redirect.pinRecords(in: folder) }
                #expect(twice.code == .pinExists && twice.hint?.contains("replacing: true") == true, "\(twice)")

                // The agent restarts: a new redirect pins its own table in place of the old one. The records
                // opened from the pin go on with it (a lookup that finds nothing looks whether the pin was made anew).
                let restarted = try ProxyRedirect(attachingTo: mesh)
                defer { restarted.detach() }
                try restarted.pinRecords(in: folder, replacing: true)
                let newClient = Endpoint(.loopback, port: 47_115)
                try restarted.datapath.maps.originalDestinations.insert(
                    .init(original: .init(address: IPAddress.loopback.networkOrderWords, port: UInt16(10).bigEndian), sourceIdentity: 43, sourceTenant: 5,
                          clientCookie: 0),
                    for: .init(clientAddress: newClient.address.networkOrderWords, proxyAddress: proxy.address.networkOrderWords,
                               clientPort: newClient.port, proxyPort: proxy.port))
                #expect(try records.connection(client: newClient, proxy: proxy)?.sourceIdentity == 43, "the records opened from the pin stayed with the old table")
            }
            try withPinFolder { folder in
                try redirect.datapath.maps.redirectRules.map.pin(at: folder.path(for: RedirectRecords.pinName))
                let wrong = try #require(throws: BPFError.self) { try RedirectRecords(pinnedIn: folder) }
                #expect(wrong.code == .invalidArgument, "\(wrong)")
            }
        }
    }

    @Test("redirect by service: the proxy recovers the service address, and the balancer picks the backend for the proxy's upstream connection")
    func redirectByService() throws {
        try withRedirect("bysvc", tenant: 3, identity: 300) { namespace, mesh, client, proxy, redirect in
            // The redirect first, so it sees the service address before the balancer translates it.
            let balancer = try ServiceLoadBalancer(attachingTo: mesh)
            defer { balancer.detach() }
            let vip = Endpoint(try IPAddress("10.96.7.7"), port: 80)
            let backends = [Endpoint(try IPAddress("10.0.7.1"), port: 8080), Endpoint(try IPAddress("10.0.7.2"), port: 8080)]
            let listener = Endpoint(.loopback, port: 15010)

            let unknown = try #require(throws: BPFError.self) { try redirect.addRule(tenant: 3, service: vip, of: balancer, proxy: listener) }
            #expect(unknown.code == .keyNotFound)
            try balancer.addService(vip, backends: backends.map { .init($0) })
            try redirect.addRule(tenant: 3, service: vip, of: balancer, proxy: listener)
            // A second rule for the same service address would replace the first: refused, the first stays
            // (the second names another proxy port, where nothing listens: the traffic below proves the first rule).
            do throws(BPFError) {
                try redirect.addRule(tenant: 3, service: vip, of: balancer, proxy: Endpoint(.loopback, port: 15019))
                Issue.record("a second rule for the same service was accepted")
            } catch {
                #expect(error.code == .keyExists)
                #expect(error.detail?.contains("already has a rule") == true, "\(error)")
            }
            // A redirect attached after the balancer would never see the service address: refused.
            let late = try ProxyRedirect(attachingTo: mesh)
            defer { late.detach() }
            let order = try #require(throws: BPFError.self) { try late.addRule(tenant: 3, service: vip, of: balancer, proxy: listener) }
            #expect(order.code == .invalidArgument)
            #expect(order.hint?.contains("before the ServiceLoadBalancer") == true)
            late.detach()

            try withProxyAndServers(namespace, proxy: proxy, listen: listener, servers: backends) {
                let answers = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.96.7.7 80 20").check()
                    .output.split(separator: "\n")
                #expect(answers.count == 20)
                #expect(answers.allSatisfy { $0.hasPrefix("10.96.7.7 80 10.0.7.") }, "\(answers)")
                #expect(Set(answers).count == 2, "the balancer should spread the proxy's 20 upstream connections: \(Set(answers))")
            }
            #expect(try redirect.counters().redirected == 20)
            #expect(try redirect.counters().originalDestinationAnswered == 20)
            #expect(try balancer.counters().connects == 20)
        }
    }

    @Test("a policy rule's redirect verdict sends matching connects to the proxy, which recovers the original destination; other ports go straight; the proxy's own connects under the same rule are not redirected; rule counters tell them apart")
    func policyRedirectVerdict() throws {
        let identity = Identity(labels: ["app": "polredir"])
        try withRedirect("polredir", tenant: 4, identity: identity.rawValue) { namespace, mesh, client, proxy, redirect in
            let policy = try IdentityPolicy(attachingTo: mesh, redirectingThrough: redirect)
            defer { policy.detach() }
            // The proxy has the workload's identity, so its upstream connects match the redirect rule too.
            try policy.assign(identity, to: client)
            try policy.assign(identity, to: proxy)
            let listener = Endpoint(.loopback, port: 15030)
            let redirected = Endpoint(try IPAddress("10.0.9.1"), port: 80), direct = Endpoint(try IPAddress("10.0.9.2"), port: 81)
            let ids = try policy.setPolicy(for: identity, rules: [
                .init(.redirect(to: listener), to: .cidr(try IPv4CIDR("10.0.9.0/24")), ports: 80...80, transport: .tcp),
                .init(.allow, to: .any),
            ], defaultDeny: true)

            let records = redirect.datapath.maps.pendingRedirects
            var everything: [UInt16] = []
            try withProxyAndServers(namespace, proxy: proxy, listen: listener, servers: [redirected, direct]) {
                let viaProxy = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.0.9.1 80 5").check()
                    .output.split(separator: "\n")
                #expect(viaProxy == Array(repeating: "10.0.9.1 80 10.0.9.1", count: 5), "the proxy's answers: \(viaProxy)")
                let straight = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.0.9.2 81 5").check()
                    .output.split(separator: "\n")
                #expect(straight == Array(repeating: "10.0.9.2", count: 5), "answers without the proxy: \(straight)")
                #expect(try policy.counts(ofRule: ids[0]) == .init(allowed: 5, denied: 0, redirected: 5), "5 workload connects redirected, the proxy's 5 allowed")
                #expect(try policy.counts(ofRule: ids[1]) == .init(allowed: 5, denied: 0))
                #expect(try redirect.counters().originalDestinationAnswered == 5)
                #expect(try redirect.counters().redirected == 0, "ProxyRedirect has no rule of its own here")

                // Both redirects on one connect: ProxyRedirect (attached first) sends 10.0.9.1:80 to the
                // listener; a policy rule redirecting every TCP connect then finds it already at a proxy and
                // leaves its record alone, so the proxy still reads the original destination.
                try redirect.addRule(tenant: 4, destination: CIDR("10.0.9.1/32"), port: 80, proxy: listener)
                everything = try policy.setPolicy(for: identity, rules: [.init(.redirect(to: listener), to: .any, transport: .tcp)], defaultDeny: true)
                let twice = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.0.9.1 80 3").check()
                    .output.split(separator: "\n")
                #expect(twice == Array(repeating: "10.0.9.1 80 10.0.9.1", count: 3), "the proxy's answers: \(twice)")
                #expect(try redirect.counters().redirected == 3)
                #expect(try policy.counts(ofRule: everything[0]) == .init(allowed: 6, denied: 0), "3 already at the proxy, the proxy's 3")
                // Two listeners: ProxyRedirect sends 10.0.9.2:81 to a second one; the policy's rule, later on
                // the hook, sends it on to the first, and the original destination stays the application's.
                let second = Endpoint(.loopback, port: 15031)
                try redirect.addRule(tenant: 4, destination: CIDR("10.0.9.2/32"), port: 81, proxy: second)
                let secondForwarder = try startForwarder(namespace, proxy: proxy, listen: second)
                defer { secondForwarder.stop() }
                let viaSecond = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.0.9.2 81 3").check()
                    .output.split(separator: "\n")
                #expect(viaSecond == Array(repeating: "10.0.9.2 81 10.0.9.2", count: 3), "the proxy's answers: \(viaSecond)")
                #expect(try redirect.counters().redirected == 6)
                #expect(try policy.counts(ofRule: everything[0]) == .init(allowed: 9, denied: 0, redirected: 3), "3 redirected on, the proxy's 3")
                // A native IPv6 destination cannot go to the policy's IPv4 proxy: the redirect rule passes it
                // over, and the default (deny) applies instead of a silent allow.
                let native = try runInCgroup(client.path, namespace: namespace, "python3 -c '" + """
                    import socket
                    try: socket.create_connection(("fd00:9::1", 80), timeout=2); print("connected")
                    except OSError as error: print(error.errno)
                    """ + "'").check().output
                #expect(native == "1\n", "EPERM expected, got \(native)")
            }
            #expect(try records.keys().isEmpty, "every pending record reached the proxy")
            #expect(try policy.counters().redirectsUnrecorded == 0)

            // Rules that could not work are refused, and the policy in force stays.
            func refused(_ rule: IdentityPolicy.Rule, direction: IdentityPolicy.Direction = .egress, _ policy: IdentityPolicy) throws -> BPFError {
                try #require(throws: BPFError.self) { try policy.setPolicy(for: identity, direction: direction, rules: [rule], defaultDeny: false) }
            }
            let toProxy = IdentityPolicy.Verdict.redirect(to: listener)
            #expect(try refused(.init(toProxy, to: .any, transport: .udp), policy).detail?.contains("TCP") == true)
            #expect(try refused(.init(toProxy, to: .any), policy).detail?.contains("TCP") == true)
            #expect(try refused(.init(toProxy, to: .any, transport: .tcp), direction: .ingress, policy).detail?.contains("egress") == true)
            let v6 = IdentityPolicy.Verdict.redirect(to: Endpoint(try IPAddress("::1"), port: 15030))
            #expect(try refused(.init(v6, to: .any, transport: .tcp), policy).detail?.contains("IPv4") == true)
            let unredirected = try IdentityPolicy(attachingTo: client)
            defer { unredirected.detach() }
            #expect(try refused(.init(toProxy, to: .any, transport: .tcp), unredirected).hint?.contains("redirectingThrough") == true)
            #expect(try policy.datapath.maps.policies.lookup(identity.rawValue)?.ruleCount == 1)
            // A replacement takes ids no rule in force or recently replaced has: a connect racing it
            // counts and redirects by one set's rules, never by a mix of the two.
            let replaced = try policy.setPolicy(for: identity, rules: [.init(toProxy, to: .any, transport: .tcp)], defaultDeny: false)
            #expect(Set(replaced).isDisjoint(with: ids + everything))
        }
    }

    @Test("one proxy cgroup registered and unregistered from four threads at once, ten times: the table entry and the attached programs agree after each, and end as the last call left them")
    func concurrentRegistration() throws {
        try withCgroup("regrace") { mesh in
            let proxy = try Cgroup.create("proxy", under: mesh)
            defer { try? proxy.remove() }
            let redirect = try ProxyRedirect(attachingTo: mesh)
            defer { redirect.detach() }
            let proxyTypes = [AttachType.cgroupInetIngress, .cgroupSockOps, .cgroupGetsockopt]
            /// Whether the proxy is registered, checked to agree with what is attached
            /// (waited for: the kernel may hold a released link until a forked child execs).
            func registered() throws -> Bool {
                let entry = try redirect.datapath.maps.workloads.lookup(try proxy.id()) != nil
                let attached = entry ? 1 : 0
                #expect(try eventually { try proxyTypes.allSatisfy { try proxy.attachedProgramIDs($0).count == attached } },
                        "the table says \(entry ? "registered" : "unregistered")")
                return entry
            }
            let failures = Mutex<[String]>([])
            for _ in 0..<10 {
                DispatchQueue.concurrentPerform(iterations: 4) { thread in
                    for round in 0..<25 {
                        do {
                            if (thread + round) % 2 == 0 { try redirect.register(proxy: proxy) } else { try redirect.unregister(proxy) }
                        } catch {
                            failures.withLock { $0.append("\(error)") }
                        }
                    }
                }
                _ = try registered()
            }
            let errors = failures.withLock { $0 }
            #expect(errors.isEmpty, "\(errors)")
            try redirect.register(proxy: proxy)
            #expect(try registered())
            try redirect.unregister(proxy)
            #expect(try !registered())
        }
    }

    @Test("a proxy in nested registered cgroups: the SYN meets both cgroups' programs; the first learns the record, the second keeps it (the same client socket)")
    func nestedProxyCgroupsKeepTheRecord() throws {
        try withNetworkNamespace { namespace in
            try withCgroup("redirnest") { mesh in
                let client = try Cgroup.create("client", under: mesh)
                let outer = try Cgroup.create("proxy", under: mesh)
                let inner = try Cgroup.create("inner", under: outer)
                defer { for cgroup in [client, inner, outer] { try? cgroup.remove() } }
                let redirect = try ProxyRedirect(attachingTo: mesh)
                defer { redirect.detach() }
                try redirect.register(workload: client, tenant: 6, identity: 600)
                try redirect.register(proxy: outer)
                try redirect.register(proxy: inner)
                try redirect.register(proxy: inner)   // again: nothing more attached
                #expect(try inner.attachedProgramIDs(.cgroupInetIngress).count == 1)
                try redirect.addRule(tenant: 6, destination: CIDR("10.96.6.0/24"), proxy: Endpoint(.loopback, port: 15_006))

                try withTemporaryDirectory("nest") { directory in
                    let reportFile = directory.appendingPathComponent("report").path
                    let mini = try Background(cgroupCommand(inner.path, namespace: namespace, "python3 -c '\(originalDestinationProxy)' 15006 \(reportFile)"))
                    defer { mini.stop() }
                    #expect(try waitForListeners(["127.0.0.1:15006"], in: namespace))
                    let received = directory.appendingPathComponent("received").path
                    let caller = try Background(cgroupCommand(client.path, namespace: namespace,
                        "python3 -c 'import socket, sys; s = socket.create_connection((\"10.96.6.6\", 9000)); open(sys.argv[1], \"w\").write(s.recv(100).decode()); s.recv(1)' \(received)"))
                    defer { caller.stop() }
                    #expect(eventually(timeout: .seconds(10)) { (try? String(contentsOfFile: received, encoding: .utf8)) == "original 10.96.6.6:9000\n" })
                    // While the connection is open, its record is there for the Swift API too, learned once.
                    let clientEndpoint = try #require(try clientEndpoint(inReport: String(contentsOfFile: reportFile, encoding: .utf8)))
                    #expect(try redirect.originalDestination(client: clientEndpoint, proxy: Endpoint(.loopback, port: 15_006))
                            == Endpoint(.v4(try IPv4Address("10.96.6.6")), port: 9000))
                    #expect(try redirect.counters().recorded == 1)
                    #expect(try redirect.datapath.maps.pendingRedirects.keys().isEmpty, "the pending record was not moved")
                }
            }
        }
    }

    @Test("a pending record goes only to the listener its connect() was sent to: a socket whose redirected connect() sent no SYN and that then connects to another proxy listener brings no original destination")
    func pendingRecordFollowsItsListener() throws {
        try withRedirect("redirpend", tenant: 8, identity: 800) { namespace, mesh, client, proxy, redirect in
            // Redirect first, then policy: the policy sees the rewritten destination and refuses it,
            // so the redirected connect() ends with EPERM before any SYN, its record left pending.
            let policy = try IdentityPolicy(attachingTo: mesh)
            defer { policy.detach() }
            try redirect.addRule(tenant: 8, destination: CIDR("10.96.8.0/24"), proxy: Endpoint(.loopback, port: 15_020))
            let identity = Identity(labels: ["app": "pending"])
            try policy.assign(identity, to: client)
            try policy.setPolicy(for: identity, rules: [
                .init(.deny, to: .cidr(try IPv4CIDR("127.0.0.1/32")), ports: 15_020...15_020),
                .init(.allow, to: .any),
            ], defaultDeny: false)

            let holding = try Background(cgroupCommand(proxy.path, namespace: namespace,
                "python3 -c 'import socket; l = socket.create_server((\"127.0.0.1\", 15021)); c, _ = l.accept(); c.recv(1)'"))
            defer { holding.stop() }
            #expect(try waitForListeners(["127.0.0.1:15021"], in: namespace))
            try withTemporaryDirectory("pend") { directory in
                let report = directory.appendingPathComponent("client").path
                let caller = try Background(cgroupCommand(client.path, namespace: namespace, "python3 -c '" + """
                    import socket, sys
                    s = socket.socket()
                    try:
                        s.connect(("10.96.8.8", 80))
                        first = "connected"
                    except OSError as error:
                        first = str(error.errno)
                    s.connect(("127.0.0.1", 15021))
                    open(sys.argv[1], "w").write("%s %d\\n" % (first, s.getsockname()[1]))
                    s.recv(1)
                    """ + "' \(report)"))
                defer { caller.stop() }
                #expect(eventually(timeout: .seconds(10)) { ((try? String(contentsOfFile: report, encoding: .utf8)) ?? "").hasSuffix("\n") })
                let fields = try String(contentsOfFile: report, encoding: .utf8).split(whereSeparator: { $0 == " " || $0 == "\n" })
                #expect(fields.first == "\(EPERM)", "the redirected connect() should have been refused before its SYN: \(fields)")
                #expect(try redirect.counters().redirected == 1 && redirect.datapath.maps.pendingRedirects.keys().count == 1)
                let port = try #require(fields.last.flatMap { UInt16($0) })
                // Connected to the other listener, and open: it has no original destination.
                #expect(try redirect.originalDestination(client: Endpoint(.loopback, port: port), proxy: Endpoint(.loopback, port: 15_021)) == nil)
                #expect(try redirect.counters().recorded == 0)
            }
        }
    }

    @Test("native IPv6: a rule on an IPv6 network sends IPv6 sockets to an IPv6 proxy, which reads SOL_IPV6 IP6T_SO_ORIGINAL_DST")
    func nativeIPv6() throws {
        try withRedirect("redir6", tenant: 4, identity: 400) { namespace, mesh, client, proxy, redirect in
            let listener = Endpoint(.ipv6Loopback, port: 15011)
            try redirect.addRule(tenant: 4, destination: CIDR("fd00:97::/64"), proxy: listener)
            for (network, proxy) in [("10.97.0.0/16", listener), ("fd00:98::/64", Endpoint(.loopback, port: 15011))] {
                let wrongFamily = try #require(throws: BPFError.self) {
                    try redirect.addRule(tenant: 4, destination: CIDR(network), proxy: proxy)
                }
                #expect(wrongFamily.code == .invalidArgument)
            }
            // Even ::/0 covers IPv6 destinations only, never the mapped form of IPv4 ones.
            try redirect.addRule(tenant: 4, destination: CIDR("::/0"), port: 9999, proxy: listener)
            let upstream = Endpoint(try IPAddress("fd00:97::5"), port: 9000)
            let plain = Endpoint(try IPAddress("127.0.0.2"), port: 9999)
            try withProxyAndServers(namespace, proxy: proxy, listen: listener, servers: [upstream, plain]) {
                let answers = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' fd00:97::5 9000 3").check()
                    .output.split(separator: "\n")
                #expect(answers == Array(repeating: "fd00:97::5 9000 fd00:97::5", count: 3))
                let direct = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 127.0.0.2 9999 1").check()
                #expect(direct.output == "127.0.0.2\n", "an IPv4 connection was redirected by an IPv6 rule")
                let mapped = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' ::ffff:127.0.0.2 9999 1").check()
                #expect(mapped.output == "127.0.0.2\n", "a mapped IPv4 destination was redirected by an IPv6 rule")
            }
            let counters = try redirect.counters()
            #expect(counters.redirected == 3 && counters.recorded == 3 && counters.originalDestinationAnswered == 3)
        }
    }

    @Test("full tables: a full rule table refuses the next rule with a typed error; a full connection table evicts to make room and new connections still reach their destination")
    func fullTables() throws {
        try withRedirect("redirfull", tenant: 5, identity: 500, ruleCapacity: 2, connectionCapacity: 4) { namespace, mesh, client, proxy, redirect in
            let listener = Endpoint(.loopback, port: 15012)
            try redirect.addRule(tenant: 5, destination: CIDR("10.98.0.0/16"), proxy: listener)
            try redirect.addRule(tenant: 6, destination: CIDR("10.98.0.0/16"), proxy: listener)
            let full = try #require(throws: BPFError.self) {
                try redirect.addRule(tenant: 7, destination: CIDR("10.98.0.0/16"), proxy: listener)
            }
            #expect(full.code == .mapFull)
            // Fill the connection table with records of connections that no longer exist.
            var stale: [ProxyRedirectObject.ProxiedConnection] = []
            for index in 1...4 {
                let key = ProxyRedirectObject.ProxiedConnection(
                    clientAddress: IPAddress.v4(IPv4Address(0x0A01_0100 + UInt32(index))).networkOrderWords,
                    proxyAddress: IPAddress.loopback.networkOrderWords, clientPort: 40_000, proxyPort: 15012)
                try redirect.datapath.maps.originalDestinations.insert(.init(), for: key)
                stale.append(key)
            }
            let upstream = Endpoint(try IPAddress("10.98.0.9"), port: 9000)
            try withProxyAndServers(namespace, proxy: proxy, listen: listener, servers: [upstream]) {
                let answers = try runInCgroup(client.path, namespace: namespace, "python3 -c '\(answerCollector)' 10.98.0.9 9000 3").check()
                    .output.split(separator: "\n")
                #expect(answers == Array(repeating: "10.98.0.9 9000 10.98.0.9", count: 3))
            }
            #expect(try redirect.counters().recordFailures == 0)
            var remaining = 0
            for key in stale where try redirect.datapath.maps.originalDestinations.lookup(key) != nil { remaining += 1 }
            #expect(remaining < 4, "nothing was evicted")
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
