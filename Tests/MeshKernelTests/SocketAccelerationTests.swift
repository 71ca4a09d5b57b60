import Foundation
import MeshKernel
import MeshTestSupport
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

/// Sixteen concurrent connections, random sizes up to 2 MiB, each client
/// half-closing after its request; the server echoes until EOF, then closes.
private let concurrentWorkout = #"""
import hashlib, json, os, random, socket, threading
def segments():
    rows = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["OutSegs"])
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(64)
def serve():
    while True:
        connection, _ = listener.accept()
        def echo(connection=connection):
            while True:
                chunk = connection.recv(1 << 20)
                if not chunk: break
                connection.sendall(chunk)
            connection.close()
        threading.Thread(target=echo, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
rng = random.Random(11)
sizes = [rng.choice([1, 7, 1500, 65537, rng.randint(1, 2 << 20)]) for _ in range(16)]
results = [None] * 16
spurious = [0] * 16
def client(index):
    payload = os.urandom(sizes[index])
    s = socket.create_connection(listener.getsockname())
    sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR))); sender.start()
    received = bytearray()
    while True:
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            # Linux 6.18 sockmap: a blocking recv() on a redirected socket can
            # return EAGAIN spuriously; counted and reported, then retried.
            spurious[index] += 1
            continue
        if not chunk: break
        received += chunk
    sender.join(); s.close()
    results[index] = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
before = segments()
threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"ok": all(results), "bytes": sum(sizes), "segments": segments() - before, "spuriousEAGAIN": sum(spurious)}))
"""#

struct WorkoutResult: Decodable {
    var ok: Bool
    var bytes: Int
    var segments: Int
    var spuriousEAGAIN: Int?
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

    @Test("sixteen concurrent connections of random sizes with half-close: byte-exact, and only handshakes and FINs hit the TCP stack")
    func concurrentHalfClose() throws {
        try withNetworkNamespace { namespace in
            let plain = try withCgroup("cpl") { cgroup in
                try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(concurrentWorkout)'", timeout: .seconds(120)).check()
            }
            let plainResult = try JSONDecoder().decode(WorkoutResult.self, from: Data(plain.output.utf8))
            #expect(plainResult.ok)
            try withCgroup("cac") { cgroup in
                let acceleration = try SocketAcceleration(cgroup: cgroup)
                defer { acceleration.detach() }
                let output = try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(concurrentWorkout)'", timeout: .seconds(120)).check()
                let result = try JSONDecoder().decode(WorkoutResult.self, from: Data((output.output.split(separator: "\n").last ?? "").utf8))
                print("concurrent half-close through the shortcut: \(result.segments) segments (plain \(plainResult.segments)), spurious EAGAIN from blocking recv: \(result.spuriousEAGAIN ?? 0)")
                #expect(result.ok, "bytes differ through the shortcut under concurrency and half-close")
                // Per connection: three-way handshake and two FIN/ACK exchanges, nothing for data.
                #expect(result.segments <= 16 * 10, "\(result.segments) segments, plain run \(plainResult.segments)")
                #expect(plainResult.segments > 2 * result.segments)
                #expect(try acceleration.counters().socketsAdded == 32)
                #expect(try eventually { try acceleration.sockets.keys().isEmpty })
            }
        }
    }

    @Test("a full sockhash fails open: extra sockets use the normal stack, counted, and their bytes still arrive")
    func fullSockhashFailsOpen() throws {
        try withNetworkNamespace { namespace in
            try withCgroup("afl") { cgroup in
                let acceleration = try SocketAcceleration(cgroup: cgroup, capacity: 2)
                defer { acceleration.detach() }
                let output = try runInCgroup(cgroup.path, namespace: namespace, "python3 -c '\(concurrentWorkout)'", timeout: .seconds(120)).check()
                let result = try JSONDecoder().decode(WorkoutResult.self, from: Data((output.output.split(separator: "\n").last ?? "").utf8))
                #expect(result.ok)
                let counters = try acceleration.counters()
                #expect(counters.socketsAdded <= 2 + counters.socketsRemoved)
                #expect(counters.insertFailures > 0)
                #expect(counters.socketsAdded + counters.insertFailures == 32)
            }
        }
    }

    @Test("the generated mirror of struct sock_key matches the object's BTF")
    func keyLayout() throws {
        let object = try BPFObject.open(.sockRedirect)
        try object.load()
        #expect(throws: Never.self) { try SockHash<SockRedirectObject.SockKey>(object.map("sock_hash")) }
        #expect(MemoryLayout<SockRedirectObject.SockKey>.size == 48)
        struct WrongKey: BitwiseCopyable { var local: UInt64, remote: UInt64, ports: UInt32 }
        let error = try #require(throws: BPFError.self) { try SockHash<WrongKey>(object.map("sock_hash")) }
        #expect(error.detail?.contains("struct sock_key") == true)
    }
}
