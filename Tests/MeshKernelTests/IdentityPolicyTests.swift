import Foundation
import MeshKernel
import MeshTestSupport
import Testing

/// Tries each `address:port[/udp]` argument and prints `address:port ok|errno`.
private let policyClient = #"""
import socket, sys
for target in sys.argv[1:]:
    udp = target.endswith("/udp")
    address, port = target.replace("/udp", "").rsplit(":", 1)
    family = socket.AF_INET6 if address.startswith("[") else socket.AF_INET
    address = address.strip("[]")
    try:
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM); s.settimeout(3)
        if udp:
            s.sendto(b"x", (address, int(port)))
        else:
            s.connect((address, int(port)))
        print(target, "ok")
    except OSError as error:
        print(target, error.errno)
"""#

@Suite("Identity-based L3/L4 policy", .kernel, .serialized)
struct IdentityPolicyTests {
    @Test("identities come from labels: the same labels give the same identity, reserved ones stay reserved")
    func identities() throws {
        let allocator = IdentityAllocator()
        let web = try allocator.identity(for: ["app": "web", "tier": "front"])
        #expect(try allocator.identity(for: ["tier": "front", "app": "web"]) == web)
        #expect(web == Identity(labels: ["app": "web", "tier": "front"]))
        #expect(try allocator.identity(for: ["app": "db"]) != web)
        #expect(web.rawValue >= Identity.firstDerived)
        #expect(Identity.host.rawValue == 1 && Identity.world.rawValue == 2)
        #expect(throws: BPFError.self) { try allocator.identity(for: [:]) }
        // Label sets that a naive "k=v,k=v" form would confuse stay apart.
        #expect(try allocator.identity(for: ["a": "1,b=2"]) != allocator.identity(for: ["a": "1", "b": "2"]))
        for text in ["+1.2.3.4", "1.2.3.-4", "1.2.3.4 ", "1.2.3.4/+8"] {
            #expect(throws: BPFError.self, "\(text)") { _ = try IPv4CIDR(text) }
        }
    }

    @Test("allow, deny, CIDR, port range, protocol and default deny, with per-rule counters and flow events")
    func policyMatrix() async throws {
        try await withNetworkNamespace { namespace in
            for address in ["10.0.2.1", "10.0.3.1"] {
                try run(["ip", "netns", "exec", namespace, "ip", "addr", "add", "\(address)/32", "dev", "lo"]).check()
            }
            let servers = try Background(["ip", "netns", "exec", namespace, "python3", "-c", """
                import socket, time
                listeners = []
                for address, port in (("10.0.2.1", 5432), ("10.0.2.1", 6379), ("10.0.2.1", 7000), ("10.0.3.1", 80)):
                    s = socket.socket(); s.bind((address, port)); s.listen(16); listeners.append(s)
                time.sleep(60)
                """])
            defer { servers.stop() }
            #expect(try await awaitListeners(["10.0.3.1:80"], in: namespace, timeout: .seconds(10)))

            let mesh = try Cgroup.create(uniqueName("pol"))
            let web = try Cgroup.create("web", under: mesh)
            let other = try Cgroup.create("other", under: mesh)
            defer { for cgroup in [web, other, mesh] { try? cgroup.remove() } }
            let policy = try IdentityPolicy(attachingTo: mesh, identities: 2)
            defer { policy.detach() }
            let allocator = IdentityAllocator()
            let webIdentity = try allocator.identity(for: ["app": "web"])
            let dbIdentity = try allocator.identity(for: ["app": "db"])
            try policy.assign(webIdentity, to: web)
            try policy.register(try IPv4Address("10.0.2.1"), as: dbIdentity)
            // Until someone asks for flow events, decisions make none.
            _ = try runInCgroup(web.path, namespace: namespace, "python3 -c '\(policyClient)' 10.0.2.1:5432").check()
            #expect(try policy.counters().allowed == 1)
            #expect(try policy.datapath.maps.flowEvents.drain { _ in } == 0)
            let events = try policy.flowEvents()

            let rules = try policy.setPolicy(for: webIdentity, rules: [
                .init(.allow, to: .identity(dbIdentity), ports: 5432...5432, transport: .tcp),
                .init(.deny, to: .cidr(try IPv4CIDR("10.0.3.0/24"))),
                .init(.allow, to: .identity(dbIdentity), ports: 6000...7000, transport: .udp),
            ], defaultDeny: true)
            func attempt(_ cgroup: Cgroup, _ targets: String) throws -> [String: String] {
                let output = try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(policyClient)' \(targets)").check().output
                return Dictionary(uniqueKeysWithValues: output.split(separator: "\n").map { line in
                    let parts = line.split(separator: " ")
                    return (String(parts[0]), String(parts[1]))
                })
            }
            let results = try attempt(web, "10.0.2.1:5432 10.0.2.1:6379 10.0.3.1:80 10.0.2.1:6500/udp 10.0.2.1:7001/udp")
            #expect(results["10.0.2.1:5432"] == "ok")                 // allowed by identity and port
            #expect(results["10.0.2.1:6379"] == "\(EPERM)")           // default deny
            #expect(results["10.0.3.1:80"] == "\(EPERM)")             // denied by CIDR
            #expect(results["10.0.2.1:6500/udp"] == "ok")             // allowed by port range and protocol
            #expect(results["10.0.2.1:7001/udp"] == "\(EPERM)")       // just outside the range
            // An IPv6 socket cannot go around the policy: v4-mapped addresses are the IPv4 ones,
            // native IPv6 destinations are "world" under the default.
            let sixes = try attempt(web, "[::ffff:10.0.2.1]:6379 [::ffff:10.0.2.1]:5432 [::1]:9/udp")
            #expect(sixes["[::ffff:10.0.2.1]:6379"] == "\(EPERM)")
            #expect(sixes["[::ffff:10.0.2.1]:5432"] == "ok")
            #expect(sixes["[::1]:9/udp"] == "\(EPERM)")
            #expect(try policy.counts(ofRule: rules[0]) == .init(allowed: 2, denied: 0))
            #expect(try policy.counts(ofRule: rules[1]) == .init(allowed: 0, denied: 1))
            #expect(try policy.counts(ofRule: rules[2]) == .init(allowed: 1, denied: 0))
            let counters = try policy.counters()
            #expect(counters.allowed == 4 && counters.denied == 5)

            // An unmanaged cgroup is not policed.
            #expect(try attempt(other, "10.0.2.1:6379")["10.0.2.1:6379"] == "ok")

            // A policy change applies to the next connection.
            try policy.setPolicy(for: webIdentity, rules: [.init(.allow, to: .any, ports: 6379...6379)], defaultDeny: true)
            let after = try attempt(web, "10.0.2.1:6379 10.0.2.1:5432")
            #expect(after["10.0.2.1:6379"] == "ok" && after["10.0.2.1:5432"] == "\(EPERM)")

            // Flow events: one per decision, with identities, destination and verdict.
            // Bounded: wait for the reader to have them, then end the sequence and collect.
            #expect(await eventually { events.statistics.received >= 10 })
            events.finish()
            var seen: [IdentityPolicyObject.FlowEvent] = []
            for await event in events { seen.append(event) }
            #expect(seen.count == 10)
            #expect(seen.allSatisfy { $0.sourceIdentity == webIdentity.rawValue })
            let denied = seen.filter { $0.verdict == UInt8(IdentityPolicyObject.Verdict.deny.rawValue) }
            #expect(denied.count == 6)
            #expect(seen.contains { $0.destinationPort == 80 && $0.destinationIdentity == Identity.world.rawValue })
            #expect(seen.contains { $0.destinationPort == 5432 && $0.destinationIdentity == dbIdentity.rawValue })
            // The last two came under the policy without identity rules, where the peer's identity is
            // looked up for the event only: still the database's.
            #expect(seen.suffix(2).allSatisfy { $0.destinationIdentity == dbIdentity.rawValue }, "\(seen.suffix(2))")

            // Bad input, and a full table: typed errors, existing policies keep serving.
            let tooMany = try #require(throws: BPFError.self) {
                try policy.setPolicy(for: webIdentity, rules: Array(repeating: .init(.allow, to: .any), count: 33), defaultDeny: false)
            }
            #expect(tooMany.code == .invalidArgument)
            let portZero = try #require(throws: BPFError.self) {
                try policy.setPolicy(for: webIdentity, rules: [.init(.deny, to: .any, ports: 0...0)], defaultDeny: false)
            }
            #expect(portZero.code == .invalidArgument)
            let reserved = try #require(throws: BPFError.self) { try policy.assign(Identity(rawValue: 0), to: web) }
            #expect(reserved.code == .invalidArgument)
            let unknown = try #require(throws: BPFError.self) {
                try policy.setPolicy(for: webIdentity, rules: [.init(.allow, to: .identity(Identity(rawValue: 999_999)))], defaultDeny: false)
            }
            #expect(unknown.code == .notFound)
            try policy.setPolicy(for: dbIdentity, rules: [], defaultDeny: false)
            let full = try #require(throws: BPFError.self) {
                try policy.setPolicy(for: Identity(rawValue: 4_000), rules: [], defaultDeny: true)
            }
            #expect(full.code == .mapFull)
            #expect(try attempt(web, "10.0.2.1:6379")["10.0.2.1:6379"] == "ok")
        }
    }
}

/// Connects from `source` to each `address:port`; prints `address:port ok|timeout|errno`.
private let ingressClient = #"""
import socket, sys
source = sys.argv[1]
for target in sys.argv[2:]:
    address, port = target.split(":")
    try:
        socket.create_connection((address, int(port)), timeout=0.5, source_address=(source, 0)).close()
        print(target, "ok")
    except TimeoutError:
        print(target, "timeout")
    except OSError as error:
        print(target, error.errno)
"""#

extension IdentityPolicyTests {
    @Test("ingress: SYNs from allowed identities reach the workload, others are dropped, counted and reported")
    func ingressPolicy() async throws {
        try await withNetworkNamespace { namespace in
            for address in ["10.0.2.1", "10.0.4.1", "10.0.5.1"] {
                try run(["ip", "netns", "exec", namespace, "ip", "addr", "add", "\(address)/32", "dev", "lo"]).check()
            }
            try run(["ip", "netns", "exec", namespace, "ip", "-6", "addr", "add", "fd00:2::1/128", "dev", "lo", "nodad"]).check()
            let mesh = try Cgroup.create(uniqueName("ing"))
            let db = try Cgroup.create("db", under: mesh)
            defer { for cgroup in [db, mesh] { try? cgroup.remove() } }
            let policy = try IdentityPolicy(attachingTo: mesh)
            defer { policy.detach() }
            let dbIdentity = Identity(labels: ["app": "db"]), webIdentity = Identity(labels: ["app": "web"])
            try policy.assign(dbIdentity, to: db)
            try policy.register(try IPv4Address("10.0.2.1"), as: dbIdentity)
            try policy.register(try IPv4Address("10.0.4.1"), as: webIdentity)
            let events = try policy.flowEvents()
            let rules = try policy.setPolicy(for: dbIdentity, direction: .ingress, rules: [
                .init(.allow, to: .identity(webIdentity), ports: 5432...5432, transport: .tcp),
            ], defaultDeny: true)

            // The database listens inside its cgroup: the listening sockets belong to it.
            let servers = try Background(cgroupCommand(db.path, namespace: namespace, "python3 -c '" + """
                import socket, threading, time
                def serve(port, family=socket.AF_INET, address="10.0.2.1"):
                    s = socket.socket(family); s.bind((address, port)); s.listen(16)
                    while True: s.accept()[0].close()
                def echo():
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.2.1", 5353))
                    while True:
                        data, peer = u.recvfrom(100); u.sendto(data, peer)
                for port in (5432, 6379):
                    threading.Thread(target=serve, args=(port,), daemon=True).start()
                    threading.Thread(target=serve, args=(port, socket.AF_INET6, "fd00:2::1"), daemon=True).start()
                threading.Thread(target=echo, daemon=True).start()
                time.sleep(60)
                """ + "'"))
            defer { servers.stop() }
            #expect(try await awaitListeners(["10.0.2.1:6379", "[fd00:2::1]:6379"], in: namespace, timeout: .seconds(10)))

            func attempt(from source: String, _ targets: String) throws -> [String: String] {
                let output = try run(["ip", "netns", "exec", namespace, "python3", "-c", ingressClient, source] + targets.split(separator: " ").map(String.init)).check().output
                return Dictionary(uniqueKeysWithValues: output.split(separator: "\n").map { line in
                    let parts = line.split(separator: " ")
                    return (String(parts[0]), String(parts[1]))
                })
            }
            let fromWeb = try attempt(from: "10.0.4.1", "10.0.2.1:5432 10.0.2.1:6379")
            #expect(fromWeb["10.0.2.1:5432"] == "ok")
            #expect(fromWeb["10.0.2.1:6379"] == "timeout")        // default deny: the SYN is dropped
            let fromWorld = try attempt(from: "10.0.5.1", "10.0.2.1:5432")
            #expect(fromWorld["10.0.2.1:5432"] == "timeout")       // world is not web
            // A one-byte datagram (too short for a full transport header) is policed like any other.
            // (Waiting `wait` seconds for the echo: long where it is expected, from a server a loaded machine may wake late.)
            func datagram(from source: String, wait: Double) throws -> String {
                try run(["ip", "netns", "exec", namespace, "python3", "-c",
                         "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.settimeout(float(sys.argv[2]))\ns.sendto(b\"x\", (\"10.0.2.1\", 5353))\ntry:\n    print(s.recv(10).decode())\nexcept TimeoutError:\n    print(\"timeout\")", source, String(wait)]).check().output
            }
            try policy.setPolicy(for: dbIdentity, direction: .ingress, rules: [
                .init(.allow, to: .identity(webIdentity), ports: 5353...5353, transport: .udp),
            ], defaultDeny: true)
            #expect(try datagram(from: "10.0.4.1", wait: 5) == "x\n")
            #expect(try datagram(from: "10.0.5.1", wait: 0.5) == "timeout\n")
            #expect(try policy.counts(ofRule: rules[0]).allowed == 1)

            // Native IPv6 peers are world with no IPv4 address (policy CIDRs and peer identities are IPv4):
            // under default deny, neither an identity rule nor a CIDR lets their SYNs in, a rule for any peer does.
            // "ok" only once the server's close arrives: the rest of the connection passed too.
            // (Waiting `wait` seconds: long where the server's close is expected, as for the datagram above.)
            func connect6(_ port: Int, wait: Double = 0.5) throws -> String {
                try run(["ip", "netns", "exec", namespace, "python3", "-c",
                         "import socket, sys\ntry:\n    s = socket.create_connection((\"fd00:2::1\", int(sys.argv[1])), timeout=float(sys.argv[2]))\n    print(\"ok\" if s.recv(1) == b\"\" else \"data\")\nexcept TimeoutError:\n    print(\"timeout\")\nexcept OSError as error:\n    print(error.errno)",
                         String(port), String(wait)]).check().output
            }
            try policy.setPolicy(for: dbIdentity, direction: .ingress, rules: [
                .init(.allow, to: .identity(webIdentity), ports: 5432...5432, transport: .tcp),
                .init(.allow, to: .cidr(try IPv4CIDR("0.0.0.0/1")), ports: 5432...5432, transport: .tcp),
            ], defaultDeny: true)
            #expect(try connect6(5432) == "timeout\n")
            try policy.setPolicy(for: dbIdentity, direction: .ingress, rules: [
                .init(.allow, to: .any, ports: 5432...5432, transport: .tcp),
            ], defaultDeny: true)
            #expect(try connect6(5432, wait: 5) == "ok\n")
            #expect(try connect6(6379) == "timeout\n")

            // Bounded: six SYN decisions (three over IPv6) and two datagram decisions at least.
            #expect(await eventually { events.statistics.received >= 8 })
            events.finish()
            var ingress: [IdentityPolicyObject.FlowEvent] = []
            for await event in events where event.direction == IdentityPolicyObject.FlowDirection.ingress.rawValue { ingress.append(event) }
            #expect(ingress.contains { $0.sourceIdentity == webIdentity.rawValue && $0.destinationPort == 5432 && $0.verdict == UInt8(IdentityPolicyObject.Verdict.allow.rawValue) })
            #expect(ingress.contains { $0.sourceIdentity == webIdentity.rawValue && $0.destinationPort == 6379 && $0.verdict == UInt8(IdentityPolicyObject.Verdict.deny.rawValue) })
            #expect(ingress.allSatisfy { $0.destinationIdentity == dbIdentity.rawValue })
            // The IPv6 SYNs' events: peer world, marked IPv6, no address.
            let fromIPv6 = ingress.filter { $0.peerIsIpv6 == 1 }
            #expect(fromIPv6.count >= 3 && fromIPv6.allSatisfy { $0.peerAddress == 0 && $0.sourceIdentity == Identity.world.rawValue }, "\(fromIPv6)")
            #expect(ingress.contains { $0.peerIsIpv6 == 0 && $0.peerAddress != 0 })
        }
    }

    @Test("ingress over IPv6: a SYN behind two extension headers is decided by the rules; one behind nine, past what the program reads, is dropped for a workload with an ingress policy")
    func ingressBehindExtensionHeaders() async throws {
        try await withNetworkNamespace { namespace in
            for address in ["fd00:2::1", "fd00:2::5"] {
                try run(["ip", "netns", "exec", namespace, "ip", "-6", "addr", "add", "\(address)/128", "dev", "lo", "nodad"]).check()
            }
            let mesh = try Cgroup.create(uniqueName("ext"))
            let db = try Cgroup.create("db", under: mesh)
            defer { for cgroup in [db, mesh] { try? cgroup.remove() } }
            let policy = try IdentityPolicy(attachingTo: mesh)
            defer { policy.detach() }
            let dbIdentity = Identity(labels: ["app": "ext-db"])
            try policy.assign(dbIdentity, to: db)
            let rules = try policy.setPolicy(for: dbIdentity, direction: .ingress, rules: [.init(.allow, to: .any, ports: 6379...6379, transport: .tcp)],
                                             defaultDeny: false)
            let server = try Background(cgroupCommand(db.path, namespace: namespace, "python3 -c '" + """
                import socket
                s = socket.socket(socket.AF_INET6); s.bind(("fd00:2::1", 6379)); s.listen(16)
                while True: s.accept()[0].close()
                """ + "'"))
            defer { server.stop() }
            #expect(try await awaitListeners(["[fd00:2::1]:6379"], in: namespace, timeout: .seconds(10)))

            // A SYN to [fd00:2::1]:6379 behind N destination-options headers, sent from a raw socket.
            func synBehind(_ headers: Int) throws -> String {
                try run(["ip", "netns", "exec", namespace, "python3", "-c", synWithExtensionHeaders, String(headers)]).check().output
            }
            #expect(try synBehind(2) == "synack\n")
            #expect(await eventually { (try? policy.counts(ofRule: rules[0]).allowed) == 1 }, "the rule should have decided the SYN")
            #expect(try policy.counters().denied == 0)
            #expect(try synBehind(9) == "none\n")
            #expect(await eventually { (try? policy.counters().denied) == 1 }, "a SYN the program cannot read should be dropped")
            #expect(try policy.counts(ofRule: rules[0]).allowed == 1)
        }
    }
}

/// Sends one TCP SYN from [fd00:2::5] to [fd00:2::1]:6379 behind argv[1]
/// destination-options headers (each 8 bytes of padding), checksummed;
/// prints "synack" if the listener answered within 0.5 s, else "none".
private let synWithExtensionHeaders = #"""
import socket, struct, sys
count, source, destination = int(sys.argv[1]), "fd00:2::5", "fd00:2::1"
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
tcp = struct.pack("!HHIIBBHHH", 40000 + count, 6379, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
pseudo = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, destination) + struct.pack("!I3xB", len(tcp), 6)
tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
headers = b"".join(struct.pack("!BB6s", 60 if index < count - 1 else 6, 0, b"\x01\x04\0\0\0\0") for index in range(count))
replies = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP); replies.settimeout(0.5)
raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 60)
raw.bind((source, 0))
raw.sendto(headers + tcp, (destination, 0))
try:
    while True:
        segment, sender = replies.recvfrom(100)
        ports, flags = struct.unpack("!HH", segment[:4]), segment[13]
        if sender[0] == destination and ports == (6379, 40000 + count) and flags & 0x12 == 0x12:
            print("synack"); break
except TimeoutError:
    print("none")
"""#

