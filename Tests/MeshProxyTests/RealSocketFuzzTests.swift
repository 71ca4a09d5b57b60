import Foundation
import Glibc
import MeshKernel
@testable import MeshProxy
import MeshTestSupport
import Synchronization
import Testing

/// The fuzz of ``HTTPProxyHandlerTests`` (on an EmbeddedChannel, each input
/// in one piece) over real sockets: a plaintext HTTP tenant is served where
/// production serves it, on the tenant's splice loop outside NIO, and each
/// input arrives in pieces, as a network may cut it.
@Suite("MeshProxy HTTP fuzzed over real sockets", .serialized)
struct RealSocketFuzzTests {
    private let loopback = IPAddress.loopback

    /// Every status a fuzzed request can be answered with here, and no other:
    /// the upstream's 200; the proxy's 400 (malformed), 404 (a target not
    /// under the route's "/"), 408 (a head cut short, at the 1 s head
    /// timeout) and 502 (the upstream closed before answering); 501 from the
    /// upstream (Python's http.server, for a method it has no handler for) or
    /// the proxy (CONNECT). Not 431 (the inputs are far below the 16 KiB head
    /// limit), 505 (the proxy answers a version other than HTTP/1.0 and 1.1
    /// with 400, so none reaches the upstream, which sends 505 for 2.0 and
    /// above only), 411 or 413 (neither sends them), nor 403, 429, 503 or
    /// 504 (no authorization, request rate or capacity here; a response
    /// timeout of 30 s, beyond a connection's deadline).
    private static let possibleStatuses: Set<Int> = [200, 400, 404, 408, 501, 502]

    /// How long a client waits for more of its answer; one that ended its
    /// output, which must be answered or closed within it, twice as long (a
    /// SYN the upstream dropped is sent again after a second).
    private static let deadline = Duration.seconds(3)

    @Test("thousands of mutated requests over real sockets to the tenant's splice loop, under a cap of buffered bytes, each in up to five sends and some half-closed: every answer is empty or begins with a well-formed status line the proxy or its upstream can give, a half-closed connection is always answered or closed, a connection left unanswered holds a whole head, and afterwards the proxy answers 200 and keeps nothing — no connection, no buffered byte, no socket on its ports")
    func realSocketFuzz() async throws {
        let server = try await startNamedHTTPServer(port: 17_256, name: "F")
        defer { server.stop() }
        var routing = HTTPRouting.everything(toLoopbackPort: 17_256)
        // A head cut short is answered 408 within a connection's deadline, not after the default 10 s.
        routing.requestHeadTimeout = .seconds(1)
        // Idle upstream connections go after a second: the proxy's sockets are counted when it holds none.
        routing.clusters["backend"]?.idleConnectionTimeout = .seconds(1)
        var tenant = TenantConfiguration(name: "fuzz", listener: Endpoint(loopback, port: 17_257), mode: .http(routing))
        // With a cap, reads take small steps and every byte held is counted against it.
        tenant.limits.maxTotalBufferedBytes = 65_536
        let inputs = Self.inputs(count: 3_000)

        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            #expect(try await Self.goodRequestAnswered(port: 17_257), "the proxy did not answer a good request before the fuzz")
            #expect(proxy.spliceLoop(of: "fuzz") != nil, "not served on the tenant's splice loop")
            // The good request's connections go (the upstream one once it has been idle for a second).
            #expect(await eventually(timeout: .seconds(10)) { Self.connections() == 0 }, "the good request's connections stayed open")

            // Several clients at once (blocking sockets, each on a thread of its own), each taking the next
            // input until all are done or 60 s have passed. They start 20 ms apart, so that their first
            // connections do not all reach the upstream (Python's http.server) at once.
            let start = ContinuousClock.now
            let dispenser = Dispenser(count: inputs.count, until: start + .seconds(60))
            let answers = try await withThrowingTaskGroup(of: [(Int, Answer)].self) { group in
                for client in 0..<32 {
                    group.addTask {
                        try await Task.sleep(for: .milliseconds(20 * client))
                        return try await offload {
                            var answered: [(Int, Answer)] = []
                            while let index = dispenser.take() {
                                answered.append((index, Self.exchange(inputs[index], port: 17_257,
                                                                             deadline: inputs[index].halfCloses ? Self.deadline * 2 : Self.deadline)))
                            }
                            return answered
                        }
                    }
                }
                var all: [(Int, Answer)] = []
                for try await answered in group { all += answered }
                return all.sorted { $0.0 < $1.0 }
            }
            let elapsed = ContinuousClock.now - start

            var outcomes: [String: Int] = [:], problems: [String] = []
            for (index, answer) in answers {
                let input = inputs[index]
                let (outcome, problem) = Self.judge(answer, to: input)
                outcomes[outcome, default: 0] += 1
                if let problem { problems.append("#\(index) \(input) -> \(problem)") }
            }
            #expect(answers.count >= 2_000, "only \(answers.count) inputs in \(elapsed)")
            #expect(problems.isEmpty, "\(problems.count) of \(answers.count) answers were wrong:\n\(problems.prefix(10).joined(separator: "\n"))")
            let statuses = outcomes.keys.filter { Int($0) != nil }
            #expect(statuses.count >= 3, "the mutations reached too few outcomes: \(outcomes)")

            // The proxy still serves, and once the fuzz's connections are gone it keeps nothing of them.
            #expect(try await Self.goodRequestAnswered(port: 17_257), "the proxy did not answer a good request after the fuzz")
            #expect(await eventually(timeout: .seconds(10)) {
                proxy.statistics("fuzz").map { $0.activeConnections == 0 && $0.bufferedBytes == 0 } ?? false
            }, "kept: \(proxy.statistics("fuzz").map { "\($0.activeConnections) connections, \($0.bufferedBytes) buffered bytes" } ?? "no statistics")")
            let back = await eventually(timeout: .seconds(15)) { Self.connections() == 0 }
            #expect(back, "\(Self.connections()) connections to or from the fuzz's ports stayed open")
        }
    }

    // MARK: - Inputs

    /// One input: its bytes, where its sends begin, and whether the client ends its output after them.
    private struct FuzzInput: Sendable, CustomStringConvertible {
        let bytes: [UInt8]
        /// The offsets (ascending, inside the bytes) at which a new `send` begins.
        let cuts: [Int]
        let halfCloses: Bool

        /// The bytes of each `send`.
        var pieces: [[UInt8]] { zip([0] + cuts, cuts + [bytes.count]).map { Array(bytes[$0..<$1]) } }

        /// Whether the bytes hold a whole head, as the proxy finds one: an
        /// empty line after the empty lines a head may begin with. A head without
        /// one is cut short, and answered 408 at the head timeout.
        var holdsWholeHead: Bool {
            var start = 0
            while start + 1 < bytes.count, bytes[start] == 0x0D, bytes[start + 1] == 0x0A { start += 2 }
            return RealSocketFuzzTests.firstEmptyLine(in: bytes, from: start) != nil
        }

        /// Whether the request is a HEAD, whose answers have no body.
        var isHead: Bool { bytes.drop { $0 == 0x0D || $0 == 0x0A }.starts(with: "HEAD ".utf8) }

        var description: String {
            "\"\(escaped(bytes))\" cut at \(cuts)\(halfCloses ? ", half-closed" : "")"
        }
    }

    /// `count` inputs, the same on every run: the EmbeddedChannel fuzz's three
    /// requests (each with a Host, so that bodies reach the upstream: without,
    /// HTTP/1.1 requests are refused before their body is read) with 1 to 6
    /// random edits, cut at 1 to 4 random places, a third of them half-closed.
    private static func inputs(count: Int) -> [FuzzInput] {
        var generator = SeededGenerator(seed: 0x50C_4E75)
        let seeds = ["GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n", "POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody",
                     "PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"].map { Array($0.utf8) }
        return (0..<count).map { round in
            let bytes = seeds[round % seeds.count].mutated(edits: 1...6, using: &generator)
            var cuts = Set<Int>()
            for _ in 0..<Int.random(in: 1...4, using: &generator) where bytes.count > 1 {
                cuts.insert(Int.random(in: 1..<bytes.count, using: &generator))
            }
            return FuzzInput(bytes: bytes, cuts: cuts.sorted(), halfCloses: Int.random(in: 0..<3, using: &generator) == 0)
        }
    }

    /// Hands out the inputs' indices in order until all are taken or the time is up.
    private final class Dispenser: Sendable {
        private let next = Atomic(0)
        private let count: Int
        private let until: ContinuousClock.Instant

        init(count: Int, until: ContinuousClock.Instant) {
            self.count = count
            self.until = until
        }

        func take() -> Int? {
            guard ContinuousClock.now < until else { return nil }
            let index = next.add(1, ordering: .relaxed).oldValue
            return index < count ? index : nil
        }
    }

    // MARK: - A client

    /// How a connection ended, as its client saw it.
    private enum Ending: String, Sendable {
        /// The proxy closed it.
        case closed
        /// The proxy reset it.
        case reset
        /// The answer was whole; the client closed the connection then.
        case answered
        /// Nothing more came before the client's deadline; the client closed the connection then.
        case gaveUp
    }

    /// What a client got.
    private struct Answer: Sendable {
        var bytes: [UInt8] = []
        var ending = Ending.gaveUp
        /// Why the client could not connect, if it could not.
        var connectFailure: Errno?
    }

    /// Sends `input` to 127.0.0.1:`port` in its pieces (a `send` each, a
    /// millisecond apart, so that the splice loop most likely reads each on its
    /// own), ends its output if the input says so, and reads the answer until
    /// the proxy closes, the answer is whole (unless the output was ended: then
    /// the proxy must close), or `deadline` passes.
    private static func exchange(_ input: FuzzInput, port: UInt16, deadline: Duration) -> Answer {
        var answer = Answer()
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard client >= 0 else {
            answer.connectFailure = .current
            return answer
        }
        defer { close(client) }
        // Each send goes out at once as a segment of its own, not gathered up behind the first.
        var one: Int32 = 1
        setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else {
            answer.connectFailure = .current
            return answer
        }
        for (index, piece) in input.pieces.enumerated() {
            if index > 0 { usleep(1_000) }
            // (A proxy that answered and closed may refuse the rest: what it answered is read below.)
            guard (try? sendAll(client, piece)) != nil else { break }
        }
        if input.halfCloses { shutdown(client, Int32(SHUT_WR)) }
        let clock = ContinuousClock()
        let end = clock.now + deadline
        var buffer = [UInt8](repeating: 0, count: 4_096)
        while clock.now < end {
            var readable = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(((end - clock.now) / .milliseconds(1)).rounded(.up))
            guard poll(&readable, 1, max(milliseconds, 1)) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if count == 0 {
                answer.ending = .closed
                return answer
            }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                answer.ending = .reset
                return answer
            }
            answer.bytes += buffer[..<count]
            if !input.halfCloses, responses(in: answer.bytes, toHead: input.isHead)?.whole == true {
                answer.ending = .answered
                return answer
            }
        }
        return answer
    }

    /// The status codes of the responses `answer` holds, in order, and whether
    /// it ends exactly with the last of them (false: one is cut short, or ends
    /// only with the connection); nil when a response does not begin with a
    /// well-formed status line, "HTTP/1.1 NNN ". `toHead`: answers to HEAD, without bodies.
    private static func responses(in answer: [UInt8], toHead: Bool) -> (statuses: [Int], whole: Bool)? {
        let statusLine = Array("HTTP/1.1 ".utf8)
        var statuses: [Int] = []
        var start = 0
        while start < answer.count {
            guard let headEnd = firstEmptyLine(in: answer, from: start) else {
                // A head still coming: what came of it must begin as a status line does.
                let begun = answer[start...]
                return begun.starts(with: statusLine.prefix(begun.count)) ? (statuses, false) : nil
            }
            let lines = String(decoding: answer[start..<headEnd], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
            let first = Array(lines[0].utf8)
            guard first.count >= 13, first.starts(with: statusLine), first[9..<12].allSatisfy({ (0x30...0x39).contains($0) }), first[12] == 0x20,
                  let status = Int(String(decoding: first[9..<12], as: UTF8.self)) else { return nil }
            statuses.append(status)
            let length = lines.dropFirst().lazy.compactMap { line -> Int? in
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                return Int(parts[1].trimmingCharacters(in: .whitespaces))
            }.first
            let bodyLength = toHead || (100..<200).contains(status) || status == 204 || status == 304 ? 0 : length
            // (Without a length, the body ends with the connection: the answer is whole only then.)
            guard let bodyLength, headEnd + 4 + bodyLength <= answer.count else { return (statuses, false) }
            start = headEnd + 4 + bodyLength
        }
        return (statuses, !statuses.isEmpty)
    }

    /// Where the first "\r\n\r\n" at or after `start` begins.
    private static func firstEmptyLine(in bytes: [UInt8], from start: Int) -> Int? {
        var index = start
        while index + 3 < bytes.count {
            if bytes[index] == 0x0D, bytes[index + 1] == 0x0A, bytes[index + 2] == 0x0D, bytes[index + 3] == 0x0A { return index }
            index += 1
        }
        return nil
    }

    /// The outcome of `answer` (its first status, or how a connection without
    /// an answer ended) and what is wrong with it, if anything.
    private static func judge(_ answer: Answer, to input: FuzzInput) -> (outcome: String, problem: String?) {
        if let failure = answer.connectFailure { return ("connect failed", "could not connect: \(failure)") }
        guard !answer.bytes.isEmpty else {
            switch (answer.ending, input.halfCloses) {
            case (.gaveUp, false) where input.holdsWholeHead:
                return ("no answer yet", nil)   // a whole head whose body the proxy (or its upstream) waits on
            case (.gaveUp, false):
                return ("no answer", "a head cut short, not answered at the 1 s head timeout within \(deadline)")
            case (.closed, true):
                return ("closed unanswered", nil)   // a request cut short by the client's end of output
            case (.gaveUp, true):
                return ("left open", "neither answered nor closed \(deadline * 2) after the client ended its output")
            default:
                return ("\(answer.ending) unanswered", "\(answer.ending) without an answer")
            }
        }
        let shown = "\(answer.ending): \"\(escaped(answer.bytes.prefix(160)))\""
        guard let (statuses, whole) = responses(in: answer.bytes, toHead: input.isHead), let first = statuses.first else {
            return ("malformed", "not a well-formed answer, \(shown)")
        }
        if let other = statuses.first(where: { !possibleStatuses.contains($0) }) { return (String(first), "status \(other), \(shown)") }
        if !whole, answer.ending != .closed { return (String(first), "an answer cut short, \(shown)") }
        if input.halfCloses, answer.ending == .gaveUp { return (String(first), "answered, then not closed after the client ended its output, \(shown)") }
        return (String(first), nil)
    }

    /// Requests GET /check and tells whether the answer is the upstream's 200.
    private static func goodRequestAnswered(port: UInt16) async throws -> Bool {
        let input = FuzzInput(bytes: Array("GET /check HTTP/1.1\r\nHost: h\r\n\r\n".utf8), cuts: [], halfCloses: false)
        let answer = try await offload { exchange(input, port: port, deadline: .seconds(10)) }
        let text = String(decoding: answer.bytes, as: UTF8.self)
        return text.hasPrefix("HTTP/1.1 200 ") && text.hasSuffix("F /check 0")
    }

    // MARK: - What the process holds

    /// The connected sockets this process holds on the fuzz's ports (the
    /// proxy's, once the test's clients are closed): the proxy's clients on
    /// 17257 and its upstream connections to 17256. Only these: a connection
    /// holds nothing else in the proxy (its timers are its loop's tasks),
    /// while the test runner's threads come and go with descriptors of their
    /// own (an epoll, an eventfd and a timer each).
    private static func connections() -> Int {
        let folder = "/proc/self/fd"
        var connections = 0
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
            guard let descriptor = Int32(name),
                  (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(folder)/\(name)"))?.hasPrefix("socket:") == true else { continue }
            var type: Int32 = 0, listening: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(descriptor, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == Int32(SOCK_STREAM.rawValue) else { continue }
            length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 0 else { continue }
            let ports = [port(of: descriptor, peer: false), port(of: descriptor, peer: true)]
            if ports.contains(17_256) || ports.contains(17_257) { connections += 1 }
        }
        return connections
    }

    /// The port of an IPv4 socket's own end, or its peer's; nil when it has none.
    private static func port(of descriptor: Int32, peer: Bool) -> UInt16? {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(descriptor, $0, &length) == 0 : getsockname(descriptor, $0, &length) == 0 }
        }
        return named && address.sin_family == sa_family_t(AF_INET) ? UInt16(bigEndian: address.sin_port) : nil
    }
}

/// `bytes` as text: printable ASCII as it is, CR and LF as \r and \n, other bytes as \xNN.
private func escaped<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
    bytes.map { byte in
        switch byte {
        case 0x0D: "\\r"
        case 0x0A: "\\n"
        case 0x5C: "\\\\"
        case 0x22: "\\\""
        case 0x20...0x7E: String(UnicodeScalar(byte))
        default: "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
    }.joined()
}
