import Foundation
@testable import MeshKernel
import Synchronization
import MeshTestSupport
import Testing

/// Six backends on 10.0.1.1-3:8080 and [fd00:1::1-3]:8080, TCP and UDP, each
/// answering with its name.
private let backendServers = #"""
import selectors, socket
selector = selectors.DefaultSelector()
for address in ["10.0.1.%d" % index for index in (1, 2, 3)] + ["fd00:1::%d" % index for index in (1, 2, 3)]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    tcp = socket.socket(family); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); tcp.bind((address, 8080)); tcp.listen(128)
    udp = socket.socket(family, socket.SOCK_DGRAM); udp.bind((address, 8080))
    selector.register(tcp, selectors.EVENT_READ, ("tcp", address)); selector.register(udp, selectors.EVENT_READ, ("udp", address))
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        kind, address = key.data
        if kind == "tcp":
            connection, _ = key.fileobj.accept(); connection.sendall(address.encode()); connection.close()
        else:
            data, peer = key.fileobj.recvfrom(100); key.fileobj.sendto(address.encode(), peer)
"""#

/// A client of the service 10.96.0.1:80 (`tcp N`, `tcp6 N` through the mapped
/// address, `udp N`, `refused`) or [fd00:96::1]:80 (`tcp6native N`,
/// `udp6native N`); prints JSON.
private let serviceClient = #"""
import errno, json, socket, sys
mode, count = sys.argv[1], int(sys.argv[2])
counts, failures, peer_ok = {}, 0, True
if mode == "tcp":
    for _ in range(count):
        try:
            s = socket.create_connection(("10.96.0.1", 80), timeout=5)
            peer_ok &= s.getpeername() == ("10.96.0.1", 80)
            name = s.recv(100).decode(); counts[name] = counts.get(name, 0) + 1; s.close()
        except OSError:
            failures += 1
elif mode == "tcp6":
    for _ in range(count):
        try:
            s = socket.socket(socket.AF_INET6); s.settimeout(5); s.connect(("::ffff:10.96.0.1", 80))
            peer_ok &= s.getpeername()[:2] == ("::ffff:10.96.0.1", 80)
            name = s.recv(100).decode(); counts[name] = counts.get(name, 0) + 1; s.close()
        except OSError:
            failures += 1
elif mode == "tcp6native":
    for _ in range(count):
        try:
            s = socket.create_connection(("fd00:96::1", 80), timeout=5)
            peer_ok &= s.getpeername()[:2] == ("fd00:96::1", 80)
            name = s.recv(100).decode(); counts[name] = counts.get(name, 0) + 1; s.close()
        except OSError:
            failures += 1
elif mode == "udp6native":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
    for _ in range(count):
        s.sendto(b"?", ("fd00:96::1", 80)); data, source = s.recvfrom(100)
        peer_ok &= source[:2] == ("fd00:96::1", 80); name = data.decode(); counts[name] = counts.get(name, 0) + 1
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    for _ in range(count):
        s.sendto(b"?", ("10.96.0.1", 80)); data, source = s.recvfrom(100)
        peer_ok &= source == ("10.96.0.1", 80); name = data.decode(); counts[name] = counts.get(name, 0) + 1
else:
    try:
        socket.create_connection(("10.96.0.1", 80), timeout=5); failures = -1
    except OSError as error:
        failures = error.errno
print(json.dumps({"counts": counts, "failures": failures, "peer_ok": peer_ok}))
"""#

struct ClientResult: Decodable {
    var counts: [String: Int]
    var failures: Int
    var peer_ok: Bool
}

@Suite("Socket-level service load balancing", .kernel, .serialized)
struct ServiceLoadBalancerTests {
    let vip = Endpoint(.v4(IPv4Address(0x0A60_0001)), port: 80)
    let backends = (1...3).map { Endpoint(.v4(IPv4Address(0x0A00_0100 + UInt32($0))), port: 8080) }
    let vip6 = Endpoint(.v6(IPv6Address(high: 0xFD00_0096_0000_0000, low: 1)), port: 80)
    let backends6 = (1...3).map { Endpoint(.v6(IPv6Address(high: 0xFD00_0001_0000_0000, low: UInt64($0))), port: 8080) }

    func client(_ cgroup: Cgroup, _ namespace: String, _ mode: String, _ count: Int) throws -> ClientResult {
        let result = try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(serviceClient)' \(mode) \(count)", timeout: .seconds(60)).check()
        return try JSONDecoder().decode(ClientResult.self, from: Data(result.output.utf8))
    }

    /// Runs the three backends on `node` (adding their addresses) until `body` returns.
    func withBackends<R>(on node: String, _ body: () throws -> R) throws -> R {
        for index in 1...3 {
            try run(["ip", "netns", "exec", node, "ip", "addr", "add", "10.0.1.\(index)/32", "dev", "lo"]).check()
            try run(["ip", "netns", "exec", node, "ip", "-6", "addr", "add", "fd00:1::\(index)/128", "dev", "lo", "nodad"]).check()
        }
        let servers = try Background(["ip", "netns", "exec", node, "python3", "-c", backendServers])
        defer { servers.stop() }
        #expect(try waitForListeners((1...3).map { "10.0.1.\($0):8080" }, in: node))
        return try body()
    }

    /// A workload cgroup with the balancer attached to it (with these table capacities).
    func withBalancer(_ tag: String, serviceCapacity: Int = 65_536, reverseCapacity: Int = 65_536,
                      _ body: (ServiceLoadBalancer, Cgroup) throws -> Void) throws {
        try withCgroup(tag) { workload in
            let balancer = try ServiceLoadBalancer(attachingTo: workload, serviceCapacity: serviceCapacity, reverseCapacity: reverseCapacity)
            defer { balancer.detach() }
            try body(balancer, workload)
        }
    }

    /// One namespace with the backends running, a workload cgroup, and the balancer (with these table capacities).
    func withTopology(_ tag: String = "lb", serviceCapacity: Int = 65_536, reverseCapacity: Int = 65_536,
                      _ body: (ServiceLoadBalancer, Cgroup, String) throws -> Void) throws {
        try withNetworkNamespace { namespace in
            try withBackends(on: namespace) {
                try withBalancer(tag, serviceCapacity: serviceCapacity, reverseCapacity: reverseCapacity) { balancer, workload in
                    try body(balancer, workload, namespace)
                }
            }
        }
    }

    @Test("weighted random balancing over TCP; the application only ever sees the service address")
    func weightedRandom() throws {
        try withTopology { balancer, workload, namespace in
            try balancer.addService(vip, backends: zip(backends, [1, 2, 3]).map { ServiceLoadBalancer.Backend($0, weight: $1) })
            let result = try client(workload, namespace, "tcp", 600)
            #expect(result.failures == 0)
            #expect(result.peer_ok, "getpeername showed a backend")
            let total = Double(result.counts.values.reduce(0, +))
            #expect(total == 600)
            for (index, weight) in [1.0, 2.0, 3.0].enumerated() {
                let share = Double(result.counts["10.0.1.\(index + 1)"] ?? 0) / total
                #expect(abs(share - weight / 6) < 0.08, "backend \(index + 1): share \(share), expected \(weight / 6)")
            }
            let counters = try balancer.counters()
            #expect(counters.connects == 600)
            #expect(counters.reverseTranslations >= 600)
        }
    }

    @Test("two nodes joined by veth: a workload on node A reaches the backends on node B through the service address")
    func acrossNodes() throws {
        try withTwoNodes(routesFromA: ["10.0.1.0/24"]) { nodeA, nodeB in
            try withBackends(on: nodeB) {
                try withBalancer("lb2") { balancer, workload in
                    try balancer.addService(vip, backends: backends.map { .init($0) })
                    let result = try client(workload, nodeA, "tcp", 90)
                    #expect(result.failures == 0)
                    #expect(result.peer_ok)
                    #expect(result.counts.keys.sorted() == ["10.0.1.1", "10.0.1.2", "10.0.1.3"])
                    #expect(result.counts.values.reduce(0, +) == 90)
                }
            }
        }
    }

    @Test("dual-stack applications: an IPv6 socket reaching the service through its IPv4-mapped address is balanced too")
    func mappedIPv6() throws {
        try withTopology { balancer, workload, namespace in
            try balancer.addService(vip, backends: backends.map { .init($0) })
            let result = try client(workload, namespace, "tcp6", 60)
            #expect(result.failures == 0)
            #expect(result.peer_ok, "getpeername on the IPv6 socket showed a backend")
            #expect(result.counts.values.reduce(0, +) == 60)
            #expect(result.counts.count == 3)
        }
    }

    @Test("native IPv6 services: TCP and UDP balanced over IPv6 backends; getpeername and recvmsg show the service; closed sockets free their entries")
    func nativeIPv6() throws {
        try withTopology { balancer, workload, namespace in
            #expect(vip6.description == "[fd00:96::1]:80")
            try balancer.addService(vip6, backends: backends6.map { .init($0) })
            try balancer.addService(vip6, protocol: .udp, selection: .consistent, backends: backends6.map { .init($0) })
            let tcp = try client(workload, namespace, "tcp6native", 60)
            #expect(tcp.failures == 0)
            #expect(tcp.peer_ok, "getpeername on the IPv6 socket showed a backend")
            #expect(tcp.counts.keys.sorted() == ["fd00:1::1", "fd00:1::2", "fd00:1::3"])
            #expect(tcp.counts.values.reduce(0, +) == 60)
            let udp = try client(workload, namespace, "udp6native", 20)
            #expect(udp.counts.count == 1 && udp.counts.values.first == 20, "one socket spread over \(udp.counts)")
            #expect(udp.peer_ok, "recvfrom showed a backend")
            // Every TCP socket is closed now, and its reverse entry went with it; the
            // unconnected UDP socket's entry stays for the LRU (it has no one peer to free).
            #expect(try eventually { try balancer.counters().reverseReleased == 60 }, "\((try? balancer.counters()).map { "\($0)" } ?? "")")
            #expect(try balancer.rememberedSockets().isEmpty)
            #expect(try balancer.datapath.maps.datagramTranslations.keys().count == 1)
            // A service and its backends share one family.
            let mixed = try #require(throws: BPFError.self) {
                try balancer.addService(Endpoint(try IPAddress("fd00:96::2"), port: 80), backends: [.init(backends[0])])
            }
            #expect(mixed.code == .invalidArgument)
            #expect(mixed.detail?.contains("family") == true)
        }
    }

    @Test("no translation outlives its socket: a refused connect and a UDP socket connected to two services in turn")
    func translationsFreedWhateverHappens() throws {
        try withTopology { balancer, workload, namespace in
            let dead = Endpoint(vip.address, port: 81), other = Endpoint(vip.address, port: 82)
            try balancer.addService(dead, backends: [.init(Endpoint(backends[0].address, port: 8081))])   // nothing listens there
            try balancer.addService(vip, protocol: .udp, backends: backends.map { .init($0) })
            try balancer.addService(other, protocol: .udp, backends: backends.map { .init($0) })
            let script = #"""
                import socket
                refused = 0
                for _ in range(5):
                    try: socket.create_connection(("10.96.0.1", 81), timeout=5)
                    except ConnectionRefusedError: refused += 1
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("10.96.0.1", 80)); u.connect(("10.96.0.1", 82)); u.close()
                print(refused)
                """#
            let output = try runInCgroup(workload.path, namespace: namespace, "python3 -c '\(script)'").check().output
            #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == "5", "the dead backend should refuse every connect")
            #expect(try balancer.counters().connects == 7)
            #expect(try eventually { try balancer.rememberedSockets().isEmpty },
                    "translations left behind: \((try? balancer.rememberedSockets().count) ?? -1)")
        }
    }

    @Test("full tables: the next service is refused with a typed error and nothing of it stays; existing services and a full reverse table keep serving")
    func fullTables() throws {
        try withTopology("lbfull", serviceCapacity: 2, reverseCapacity: 2) { balancer, workload, namespace in
            try balancer.addService(vip, backends: backends.map { .init($0) })
            try balancer.addService(vip, protocol: .udp, backends: [.init(backends[0])])
            let slotsBefore = try balancer.datapath.maps.slots.keys().count
            let full = try #require(throws: BPFError.self) {
                try balancer.addService(Endpoint(vip.address, port: 81), backends: backends.map { .init($0) })
            }
            #expect(full.code == .mapFull)
            #expect(!balancer.contains(service: Endpoint(vip.address, port: 81)))
            #expect(try balancer.datapath.maps.slots.keys().count == slotsBefore, "the refused service left slots behind")
            // Full reverse tables (capacity 2): connections still work (fail open).
            let udp = try client(workload, namespace, "udp", 5)
            #expect(udp.counts.values.reduce(0, +) == 5)
            // Entries of sockets that no longer exist hold both slots (capacity 2: cookie
            // bit 0 picks the slot) and fill the hash for sockets whose slot is taken.
            for index in UInt32(0)..<2 {
                try balancer.datapath.maps.connectionSlots.set(.init(cookie: UInt64(1) << 60 | UInt64(index)), at: index)
            }
            for cookie in [UInt64(1) << 61, UInt64(2) << 61] {
                try balancer.datapath.maps.spilledTranslations.insert(.init(), for: cookie)
            }
            let tcp = try client(workload, namespace, "tcp", 30)
            #expect(tcp.failures == 0)
            #expect(tcp.counts.values.reduce(0, +) == 30)
            #expect(!tcp.peer_ok, "with the table full, getpeername shows the backend")
            #expect(try balancer.counters().reverseFailures == 30)
            #expect(try balancer.counters().reverseSpilled == 0, "the hash was full: nothing spilled")
            #expect(try balancer.rememberedSockets().count == 4)
        }
    }

    @Test("a connected socket whose slots other open sockets hold goes to the hash: translated, freed at close; with the hash full it fails open; one that spilled and later takes its slot frees both")
    func spilledTranslations() throws {
        // One slot, so every socket wants the same one, and room for one spilled socket.
        try withTopology("lbspill", reverseCapacity: 1) { balancer, workload, namespace in
            #expect(balancer.datapath.maps.connectionSlots.count == 1)
            try balancer.addService(vip, backends: backends.map { .init($0) })
            try balancer.addService(vip, protocol: .udp, backends: backends.map { .init($0) })
            let script = #"""
                import json, socket
                def tcp(): return socket.create_connection(("10.96.0.1", 80), timeout=5)
                def udp():
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.96.0.1", 80)); return s
                def service(s): return s.getpeername() == ("10.96.0.1", 80)
                a = tcp(); b = udp(); c = tcp()
                steps = [service(a), service(b), service(c)]
                a.close(); c.close()
                b.connect(("10.96.0.1", 80)); steps.append(service(b)); b.close()
                d = udp(); e = tcp()
                steps += [service(d), service(e)]
                d.close(); e.close()
                print(json.dumps(steps))
                """#
            let output = try runInCgroup(workload.path, namespace: namespace, "python3 -c '\(script)'").check().output
            let steps = try JSONDecoder().decode([Bool].self, from: Data(output.utf8))
            // a holds the slot, b spills and fills the hash, c finds both taken and sees the
            // backend; b reconnects into the freed slot; then d takes the slot and e spills.
            #expect(steps == [true, true, false, true, true, true])
            let counters = try balancer.counters()
            #expect(counters.connects == 6)
            #expect(counters.reverseSpilled == 2, "b and e (c found the hash full)")
            #expect(counters.reverseFailures == 1, "c")
            #expect(counters.reverseReleased == 4, "a, b (slot and hash), d and e")
            #expect(try balancer.datapath.maps.connectionSlots.values().allSatisfy { $0.cookie == 0 }, "a slot was left held")
            #expect(try balancer.datapath.maps.spilledTranslations.keys().isEmpty, "b's first entry stayed in the hash")
        }
    }

    @Test("each socket has two candidate slots: in a two-slot table two open sockets whose cookies name the same slot get one each; the next ones spill")
    func twoCandidateSlots() throws {
        try withTopology("lbpair", reverseCapacity: 2) { balancer, workload, namespace in
            #expect(balancer.datapath.maps.connectionSlots.count == 2)
            try balancer.addService(vip, backends: backends.map { .init($0) })
            // Two sockets with cookies of one parity want the same first slot: the second takes its neighbour.
            let pair = #"""
                import json, socket, struct
                def cookie(s): return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
                first = socket.socket(); second = socket.socket()
                while cookie(second) % 2 != cookie(first) % 2: second.close(); second = socket.socket()
                for s in (first, second): s.settimeout(5); s.connect(("10.96.0.1", 80))
                print(json.dumps([s.getpeername() == ("10.96.0.1", 80) for s in (first, second)]))
                """#
            let paired = try runInCgroup(workload.path, namespace: namespace, "python3 -c '\(pair)'").check().output
            #expect(try JSONDecoder().decode([Bool].self, from: Data(paired.utf8)) == [true, true])
            #expect(try balancer.counters().reverseSpilled == 0, "both found a slot")
            // Five open at once: two in slots, two spilled (the hash holds two), the fifth sees the backend.
            let five = #"""
                import json, socket
                sockets = [socket.create_connection(("10.96.0.1", 80), timeout=5) for _ in range(5)]
                print(json.dumps([s.getpeername() == ("10.96.0.1", 80) for s in sockets]))
                """#
            let output = try runInCgroup(workload.path, namespace: namespace, "python3 -c '\(five)'").check().output
            #expect(try JSONDecoder().decode([Bool].self, from: Data(output.utf8)) == [true, true, true, true, false])
            let counters = try balancer.counters()
            #expect(counters.reverseSpilled == 2 && counters.reverseFailures == 1, "\(counters)")
            #expect(try eventually { try balancer.rememberedSockets().isEmpty }, "the sockets closed with the script")
        }
    }

    @Test("consistent selection keeps one UDP socket on one backend, and recvmsg reports the service address")
    func consistentUDP() throws {
        try withTopology { balancer, workload, namespace in
            try balancer.addService(vip, protocol: .udp, selection: .consistent, backends: backends.map { .init($0) })
            let result = try client(workload, namespace, "udp", 30)
            #expect(result.counts.count == 1, "one socket spread over \(result.counts)")
            #expect(result.counts.values.first == 30)
            #expect(result.peer_ok, "recvfrom showed a backend")
            #expect(try balancer.counters().datagrams == 30)
        }
    }

    @Test("backends drained, re-added and replaced during traffic: not a single connection fails")
    func churn() throws {
        try withTopology { balancer, workload, namespace in
            try balancer.addService(vip, backends: backends.map { .init($0) })
            let done = Mutex(false)
            let changes = Mutex(0)
            let churner = Thread {
                // Every set keeps a backend other than the drained one: the service is never empty.
                let sets: [[Endpoint]] = [[self.backends[1], self.backends[2]], [self.backends[0], self.backends[2]], self.backends, [self.backends[2]]]
                var step = 0
                while !done.withLock({ $0 }) && step < 5_000 {
                    do {
                        if step % 3 == 0 { try balancer.drain(self.backends[0], from: self.vip) }
                        if step % 3 == 1 { try balancer.undrain(self.backends[0], from: self.vip) }
                        if step % 3 == 2 { try balancer.setBackends(sets[(step / 3) % sets.count].map { .init($0) }, for: self.vip) }
                    } catch {
                        Issue.record("update failed: \(error)")
                    }
                    step += 1
                    changes.withLock { $0 = step }
                    usleep(500)
                }
            }
            churner.start()
            let result = try client(workload, namespace, "tcp", 400)
            done.withLock { $0 = true }
            #expect(eventually { !churner.isExecuting })
            #expect(result.failures == 0)
            #expect(result.counts.values.reduce(0, +) == 400)
            #expect(changes.withLock { $0 } > 20, "the backend set barely changed during the run")
        }
    }

    @Test("a service with no backend refuses with ECONNREFUSED; bad input is refused with typed errors")
    func refusalAndBadInput() throws {
        try withTopology { balancer, workload, namespace in
            try balancer.addService(vip, backends: [.init(backends[0])])
            try balancer.drain(backends[0], from: vip)
            let refused = try client(workload, namespace, "refused", 1)
            #expect(refused.failures == Int(ECONNREFUSED))
            #expect(try balancer.counters().refused == 1)

            let duplicate = try #require(throws: BPFError.self) { try balancer.addService(vip, backends: [.init(backends[1])]) }
            #expect(duplicate.code == .keyExists)
            let noPort = try #require(throws: BPFError.self) { try balancer.addService(Endpoint(vip.address, port: 0), backends: []) }
            #expect(noPort.code == .invalidArgument)
            let zeroWeight = try #require(throws: BPFError.self) { try balancer.setBackends([.init(backends[1], weight: 0)], for: vip) }
            #expect(zeroWeight.code == .invalidArgument)
            let twice = try #require(throws: BPFError.self) { try balancer.setBackends([.init(backends[1]), .init(backends[1])], for: vip) }
            #expect(twice.code == .invalidArgument)
            let unknown = try #require(throws: BPFError.self) { try balancer.drain(backends[0], from: Endpoint(vip.address, port: 81)) }
            #expect(unknown.code == .keyNotFound)
            // The service still works after the refused changes once its backend is back.
            try balancer.undrain(backends[0], from: vip)
            #expect(try client(workload, namespace, "tcp", 5).counts == ["10.0.1.1": 5])
            try balancer.removeService(vip)
            #expect(try balancer.datapath.maps.slots.keys().isEmpty)
        }
    }
}

@Suite("Maglev tables")
struct MaglevTableTests {
    @Test("slot apportionment keeps every backend and the total, even with extreme weights")
    func apportionment() {
        #expect(ServiceLoadBalancer.apportion([1, 2, 3], slots: 2_048) == [1, 2, 3])
        let extreme = ServiceLoadBalancer.apportion([10_000] + Array(repeating: 1, count: 2_000), slots: 2_048)
        #expect(extreme.count == 2_001 && extreme.allSatisfy { $0 >= 1 } && extreme.reduce(0, +) == 2_048)
        let skewed = MaglevTable.build([("a", 100_000), ("b", 1)])
        #expect(skewed.contains(1), "a backend with a tiny weight must still own an entry")
    }

    @Test("entries follow the weights, and removing a backend moves little more than its own share")
    func weightsAndStability() {
        let backends = (1...5).map { ("10.0.1.\($0):8080", UInt32($0 == 5 ? 2 : 1)) }
        let table = MaglevTable.build(backends)
        #expect(table.count == MaglevTable.size)
        let counts = Dictionary(grouping: table, by: { $0 }).mapValues(\.count)
        let unit = Double(MaglevTable.size) / 6
        for index in 0..<4 { #expect(abs(Double(counts[index] ?? 0) - unit) < unit * 0.15) }
        #expect(abs(Double(counts[4] ?? 0) - 2 * unit) < unit * 0.3)

        let survivors = Array(backends.dropFirst())
        let smaller = MaglevTable.build(survivors)
        let moved = zip(table, smaller).filter { old, new in old != 0 && backends[old].0 != survivors[new].0 }.count
        #expect(Double(moved) < Double(MaglevTable.size) * 0.1, "\(moved) entries of surviving backends moved")
    }
}
