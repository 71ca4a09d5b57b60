import Foundation
import MeshKernel
import Testing

/// A client and an echo server in one process, over IPv4 and IPv6 loopback.
/// Prints the TCP segments the stack sent while the payloads went through,
/// and whether every echoed byte matched.
private let echoWorkout = #"""
import json, os, random, socket, threading
def segments():
    rows = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    fields = dict(zip(rows[0][1:], rows[1][1:]))
    return int(fields["OutSegs"])
def echo(server, total):
    left = total
    while left:
        chunk = server.recv(min(left, 1 << 20))
        if not chunk: return
        server.sendall(chunk)
        left -= len(chunk)
rng = random.Random(7)
sizes = [1, 2, 100, 1460, 4096, 65536, 1 << 20, 3 << 20 | 17] + [rng.randint(1, 200000) for _ in range(12)]
results = {"ok": True, "bytes": 0}
pairs = []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    listener = socket.socket(family); listener.bind((host, 0)); listener.listen()
    client = socket.create_connection(listener.getsockname()[:2]); server, _ = listener.accept()
    pairs.append((client, server))
before = segments()
for client, server in pairs:
    for size in sizes:
        payload = os.urandom(size)
        thread = threading.Thread(target=echo, args=(server, size)); thread.start()
        sender = threading.Thread(target=client.sendall, args=(payload,)); sender.start()
        received = bytearray()
        while len(received) < size:
            chunk = client.recv(size - len(received))
            if not chunk: break
            received += chunk
        sender.join(); thread.join()
        results["ok"] &= bytes(received) == payload
        results["bytes"] += size
results["segments"] = segments() - before
print(json.dumps(results))
"""#

struct WorkoutResult: Decodable {
    var ok: Bool
    var bytes: Int
    var segments: Int
}

@Suite("Socket acceleration: the sockhash shortcut", .kernel, .serialized)
struct SocketAccelerationTests {
    func workout(in cgroup: Cgroup, namespace: String) throws -> WorkoutResult {
        let result = try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(echoWorkout)'", timeout: .seconds(120)).check()
        let line = try #require(result.output.split(separator: "\n").last)
        return try JSONDecoder().decode(WorkoutResult.self, from: Data(line.utf8))
    }

    @Test("data arrives intact while the kernel's TCP segment counter stays flat, IPv4 and IPv6")
    func redirectSkipsTCPStack() throws {
        try withNetworkNamespace { namespace in
            // Control: the same workout without acceleration sends thousands of segments.
            let plain = try withCgroup("pln") { try workout(in: $0, namespace: namespace) }
            #expect(plain.ok)
            #expect(plain.segments > 200)

            try withCgroup("acc") { cgroup in
                let acceleration = try SocketAcceleration(cgroup: cgroup)
                defer { acceleration.detach() }
                let accelerated = try workout(in: cgroup, namespace: namespace)
                #expect(accelerated.ok, "bytes differ through the shortcut")
                #expect(accelerated.bytes == plain.bytes)
                #expect(accelerated.segments <= 4, "TCP segments were sent: \(accelerated.segments)")
                let counters = try acceleration.counters()
                #expect(counters.socketsAdded == 4)
                #expect(counters.bytesRedirected == UInt64(2 * accelerated.bytes))
                #expect(counters.insertFailures == 0)
                // Closed sockets leave the sockhash.
                #expect(try eventually { try acceleration.sockets.keys().isEmpty })
                #expect(try acceleration.counters().socketsRemoved == 4)
            }
        }
    }

    @Test("the generated mirror of struct sock_key matches the object's BTF")
    func keyLayout() throws {
        let object = try BPFObject.open(.sockRedirect)
        try object.load()
        #expect(throws: Never.self) { try SockHash<SockRedirectObject.SockKey>(object.map("sock_hash")) }
        #expect(MemoryLayout<SockRedirectObject.SockKey>.size == 40)
        struct WrongKey: BitwiseCopyable { var local: UInt64, remote: UInt64, ports: UInt32 }
        let error = try #require(throws: BPFError.self) { try SockHash<WrongKey>(object.map("sock_hash")) }
        #expect(error.detail?.contains("struct sock_key") == true)
    }
}
