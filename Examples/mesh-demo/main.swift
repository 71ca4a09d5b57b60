// mesh-demo: the smallest end-to-end run of the mesh's kernel layer.
//
// Two processes in one workload cgroup talk TCP over loopback: a client sends
// 64-byte requests and an echo server answers. First over the normal TCP/IP
// stack, then with SocketAcceleration attached: sockops puts both sockets in a
// sockhash and sk_msg hands every message straight to the peer socket. The
// demo prints round-trip latency, the kernel's TCP segment counter and the
// datapath's own counters for both phases, then detaches and cleans up.
//
//   swift run mesh-demo            (as root; `make demo` prepares the machine)
import Foundation
import MeshKernel

let phaseDuration = 2.0
let messageSize = 64

// MARK: Child roles: `mesh-demo server CGROUP` and `mesh-demo client CGROUP PORT`.

func joinCgroup(_ path: String) {
    do { try Cgroup(path: path).add(process: getpid()) } catch { fail("joining \(path): \(error)") }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("mesh-demo: \(message)\n".utf8))
    exit(1)
}

func loopbackAddress(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return address
}

func withSockaddr<R>(_ address: inout sockaddr_in, _ body: (UnsafeMutablePointer<sockaddr>, socklen_t) -> R) -> R {
    withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
}

func readFully(_ fd: Int32, _ buffer: inout [UInt8]) -> Bool {
    var offset = 0
    while offset < buffer.count {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset, $0.count - offset) }
        if count <= 0 { return false }
        offset += count
    }
    return true
}

func runServer(cgroup: String) -> Never {
    joinCgroup(cgroup)
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = loopbackAddress(port: 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withSockaddr(&address) { bind(listener, $0, $1) == 0 && listen(listener, 8) == 0 && getsockname(listener, $0, &length) == 0 }
    guard bound else { fail("server socket: \(Errno(rawValue: errno))") }
    FileHandle.standardOutput.write(Data("\(UInt16(bigEndian: address.sin_port))\n".utf8))
    while true {
        let connection = accept(listener, nil, nil)
        guard connection >= 0 else { continue }
        var buffer = [UInt8](repeating: 0, count: messageSize)
        while readFully(connection, &buffer) { _ = write(connection, buffer, buffer.count) }
        close(connection)
    }
}

func runClient(cgroup: String, port: UInt16) -> Never {
    joinCgroup(cgroup)
    let connection = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var noDelay: Int32 = 1
    setsockopt(connection, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
    var address = loopbackAddress(port: port)
    guard withSockaddr(&address, { connect(connection, $0, $1) }) == 0 else { fail("connect: \(Errno(rawValue: errno))") }
    var request = [UInt8](repeating: 0x6D, count: messageSize)
    var reply = [UInt8](repeating: 0, count: messageSize)
    var samples: [Double] = []
    let start = Date()
    while Date().timeIntervalSince(start) < phaseDuration && samples.count < 2_000_000 {
        request[0] &+= 1
        let sent = DispatchTime.now().uptimeNanoseconds
        guard write(connection, request, request.count) == request.count, readFully(connection, &reply), reply == request else {
            fail("echo mismatch after \(samples.count) round trips")
        }
        samples.append(Double(DispatchTime.now().uptimeNanoseconds - sent) / 1_000)
    }
    samples.sort()
    FileHandle.standardOutput.write(Data("\(samples.count) \(samples[samples.count / 2]) \(samples[samples.count * 99 / 100])\n".utf8))
    exit(0)
}

// MARK: The parent: set up, run both phases, report, clean up.

func tcpOutSegments() -> Int {
    let text = (try? String(contentsOfFile: "/proc/net/snmp", encoding: .utf8)) ?? ""
    let rows = text.split(separator: "\n").filter { $0.hasPrefix("Tcp:") }.map { $0.split(separator: " ") }
    guard rows.count == 2, let column = rows[0].firstIndex(of: "OutSegs") else { return 0 }
    return Int(rows[1][column]) ?? 0
}

func spawn(_ arguments: [String]) throws -> (Process, Pipe) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    return (process, output)
}

struct DemoError: Error, CustomStringConvertible {
    var description: String
}

func runPhase(_ title: String, cgroup: Cgroup, acceleration: SocketAcceleration?) throws {
    let (server, serverOutput) = try spawn(["server", cgroup.path])
    defer { server.terminate(); server.waitUntilExit() }
    let portLine = serverOutput.fileHandleForReading.availableData
    guard let port = UInt16(String(decoding: portLine, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
        throw DemoError(description: "server did not report its port")
    }
    let segmentsBefore = tcpOutSegments()
    let (client, clientOutput) = try spawn(["client", cgroup.path, String(port)])
    defer { if client.isRunning { client.terminate() } }
    for second in 1...Int(phaseDuration) {
        Thread.sleep(forTimeInterval: 1)
        let kernel = acceleration.flatMap { try? $0.counters() }.map { "  datapath: \($0)" } ?? ""
        print("  [\(title)] t=\(second)s  TCP segments sent: \(tcpOutSegments() - segmentsBefore)\(kernel)")
    }
    client.waitUntilExit()
    let fields = String(decoding: clientOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: " ")
    guard client.terminationStatus == 0, fields.count == 3 else { throw DemoError(description: "client failed") }
    let roundTrips = Int(fields[0]) ?? 0
    print(String(format: "  [%@] %d round trips of %d bytes, p50 %.1f µs, p99 %.1f µs, TCP segments sent %d",
                 title, roundTrips, messageSize, Double(fields[1]) ?? 0, Double(fields[2].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0,
                 tcpOutSegments() - segmentsBefore))
}

func runDemo() throws {
    print("mesh-demo: preflight")
    let report = SystemCheck.run()
    print(report.findings.map { "  \($0)" }.joined(separator: "\n"))
    try report.requireAll()

    let cgroup = try Cgroup.create("mesh-demo-\(getpid())")
    defer { try? cgroup.remove() }
    print("mesh-demo: workload cgroup \(cgroup.path) (id \(try cgroup.id()))")

    print("mesh-demo: phase 1, plain loopback TCP")
    try runPhase("plain", cgroup: cgroup, acceleration: nil)

    print("mesh-demo: phase 2, sockmap shortcut attached (sockops + sk_msg on a sockhash)")
    let acceleration = try SocketAcceleration(cgroup: cgroup)
    try runPhase("accelerated", cgroup: cgroup, acceleration: acceleration)
    let counters = try acceleration.counters()
    print("mesh-demo: datapath counters: \(counters)")
    let attached = try cgroup.attachedProgramIDs(.cgroupSockOps)
    acceleration.detach()
    print("mesh-demo: detached sockops program(s) \(attached); attached now: \(try cgroup.attachedProgramIDs(.cgroupSockOps))")
}

// A parent may have blocked signals (test runners do); waiting for children
// relies on SIGCHLD, so start from an empty signal mask.
var noSignals = sigset_t()
sigemptyset(&noSignals)
pthread_sigmask(SIG_SETMASK, &noSignals, nil)

let arguments = CommandLine.arguments
switch arguments.dropFirst().first {
case "server" where arguments.count == 3:
    runServer(cgroup: arguments[2])
case "client" where arguments.count == 4:
    runClient(cgroup: arguments[2], port: UInt16(arguments[3]) ?? 0)
case nil:
    do { try runDemo() } catch { fail("\(error)") }
default:
    fail("usage: mesh-demo")
}
