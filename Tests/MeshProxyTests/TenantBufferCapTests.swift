import Foundation
import Logging
import MeshKernel
import MeshTestSupport
import NIOPosix
import Testing
@testable import MeshProxy

/// A tenant's cap on the bytes all its connections hold in the proxy
/// (``TenantLimits/maxTotalBufferedBytes``), over real sockets.
@Suite("MeshProxy: a tenant's cap on buffered bytes", .serialized)
struct TenantBufferCapTests {
    /// Where a tenant's connections are served.
    enum Path: String, CustomTestStringConvertible, Sendable, CaseIterable {
        /// L4, on the tenant's splice loop (its backlogs).
        case tcpOnSpliceLoop
        /// L4, on the splice loop beside a shared group's event loop.
        case tcpOnSharedLoop
        /// L4 over TLS terminated here, spliced in NIO (what NIO holds of each encrypted output).
        case tlsInNIO
        /// HTTP, on the tenant's splice loop (the client sockets' unsent output).
        case httpOnSpliceLoop
        /// HTTP over TLS terminated here, on NIO (what NIO holds of each encrypted output).
        case httpsInNIO

        var testDescription: String { rawValue }
        /// The upstream's mode (`patternStreamServer`).
        var mode: String { self == .httpOnSpliceLoop || self == .httpsInNIO ? "http" : "tcp" }
        /// The clients' mode (`stalledReaders`).
        var clientMode: String {
            switch self {
            case .tlsInNIO: "tls"
            case .httpsInNIO: "https"
            default: mode
            }
        }
        /// Whether the tenants terminate TLS: NIO then reads their sockets (not a splice loop).
        var terminatesTLS: Bool { self == .tlsInNIO || self == .httpsInNIO }
        /// The listeners of the tenant without a cap and the one with, and their upstream's port.
        var ports: (roomy: Int, capped: Int, upstream: Int) {
            switch self {
            case .tcpOnSpliceLoop: (17_206, 17_207, 17_208)
            case .tcpOnSharedLoop: (17_218, 17_219, 17_220)
            case .tlsInNIO: (17_209, 17_210, 17_211)
            case .httpOnSpliceLoop: (17_212, 17_213, 17_214)
            case .httpsInNIO: (17_215, 17_216, 17_217)
            }
        }
    }

    static let connections = 12
    static let cap = 64 * 1024
    /// 8 MiB a connection: more than the kernel's buffers on the way hold, so the proxy holds the rest.
    static let size = 8 << 20

    @Test("clients that stop reading make a tenant's connections hold bytes in the proxy: without a cap up to a read or a write buffer each, with one never more than the cap and a read a connection; reading waits meanwhile (counted), every byte arrives once the clients read, and the tenant holds nothing after; a cap set live applies to the next connections",
          arguments: Path.allCases)
    func capHolds(path: Path) async throws {
        try await withTenants(path) { proxy, tenants in
            let roomy = try await tenants.stallThenRead("roomy", on: proxy)
            let capped = try await tenants.stallThenRead("capped", on: proxy)
            let bound = Self.bound
            if path.terminatesTLS {
                // Where NIO reads, a capped tenant's sockets keep a small receive buffer (the kernel doubles what is set).
                #expect(capped.receiveBuffers.count == 2 * Self.connections && capped.receiveBuffers.allSatisfy { $0 == 2 * TenantBuffers.cappedReceiveBuffer },
                        "the capped tenant's sockets to its clients and upstream: \(capped.receiveBuffers)")
            }
            #expect(roomy.mostHeld > bound, "without a cap the stalled connections held \(roomy.mostHeld) bytes: the cap is not what a test of it would see")
            #expect(capped.mostHeld <= bound, "the capped tenant held \(capped.mostHeld) bytes, over \(bound) (\(capped.waits) waits)")
            #expect(capped.mostHeld > Self.cap / 2, "the capped tenant's connections held only \(capped.mostHeld) bytes: they were not stalled")
            #expect(roomy.waits == 0, "\(roomy.waits)")
            // The roomy tenant capped live: its next connections keep to the cap.
            try await proxy.apply(tenants.configuration(roomyCap: Self.cap))
            let capLive = try await tenants.stallThenRead("roomy", on: proxy)
            #expect(capLive.mostHeld <= bound, "capped live, the tenant held \(capLive.mostHeld) bytes, over \(bound) (\(capLive.waits) waits)")
            if path == .tcpOnSpliceLoop || path == .tcpOnSharedLoop {
                // A side reads only while its partner holds nothing: a pair holds a read at most, which the cap makes 16 KiB.
                #expect(capped.mostHeld <= Self.connections * TenantBuffers.cappedReadSize, "\(capped.mostHeld)")
            } else {
                #expect(capped.waits > 0, "the capped tenant's connections never waited")
            }
        }
    }

    @Test("a connection that moves is not starved by stalled ones: while stalled clients keep the tenant at its cap, another connection, once its client (not reading at first) has made it wait on the cap, reads its whole stream, woken when what the proxy holds for it is all sent (and in HTTP, a whole body is sent to an upstream that reads it slowly)",
          arguments: [Path.tlsInNIO, .httpOnSpliceLoop, .httpsInNIO])
    func movingNotStarved(path: Path) async throws {
        try await withCapFilled(path) { proxy, tenants, filled in
            let (folder, port, stalled, held) = (filled.folder, filled.port, filled.others, filled.held)
            // (A client reading at once may keep up with the proxy's writes, so that its connection never holds anything and never waits.)
            let moving = try await filled.waitingReader()
            defer { moving.stop() }
            // Only what it sends itself can wake it. (Well within the 300 s after which the stalled clients read anyway.)
            await moving.read(within: .seconds(25), "the moving client")
            if path.mode == "http" {
                // The request's way too: a body the upstream reads slowly, sent while the tenant stays at its cap.
                let body = folder.appendingPathComponent("body")
                #expect(FileManager.default.createFile(atPath: body.path, contents: Data(repeating: 0x61, count: Self.size)))
                let scheme = path.terminatesTLS ? "https" : "http"
                let tls = tenants.tlsArguments.isEmpty ? [] : ["--cacert", tenants.tlsArguments[1], "--resolve", "\(tenants.tlsArguments[0]):\(port):127.0.0.1"]
                let host = tenants.tlsArguments.first ?? "127.0.0.1"
                let upload = try await offload {
                    try run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload} %{size_download}", "--max-time", "25",
                             "--data-binary", "@\(body.path)"] + tls + ["\(scheme)://\(host):\(port)/upload"])
                }
                #expect(upload.output == "200 \(Self.size) \(Self.size)", "the upload: \(upload.output) \(upload.error)")
            }
            #expect(stalled.areRunning && held() >= Self.cap / 2, "the stalled clients gave up meanwhile: \(held()) held")
            try await filled.letOthersRead()
            #expect(await eventually(timeout: .seconds(10)) { held() == 0 }, "still held: \(held())")
        }
    }

    @Test("room made under the cap wakes a connection waiting on it: a connection whose client does not read waits at the cap while others hold it, and once their clients have read all, it reads on until it holds the cap itself",
          arguments: [Path.tlsInNIO, .httpOnSpliceLoop, .httpsInNIO])
    func roomWakesWaiting(path: Path) async throws {
        try await withCapFilled(path) { proxy, tenants, filled in
            let held = filled.held
            let waiting = try await filled.waitingReader()
            defer { waiting.stop() }
            try await filled.letOthersRead()
            // Alone now, and its client still not reading: it holds what it read before the others' room was made, and then up to the cap.
            #expect(await eventually(timeout: .seconds(30)) { held() >= Self.cap }, "the waiting connection was not woken by the room made: it holds \(held())")
            await waiting.read(within: .seconds(60), "the waiting client")
            #expect(await eventually(timeout: .seconds(10)) { held() == 0 }, "still held: \(held())")
        }
    }

    @Test("a tenant with a bandwidth and no cap reads in small steps where NIO reads too: its pooled upstream connections keep the small receive buffer, from the start or, pooled before the bandwidth was set live, from their next request")
    func bandwidthReadsInSmallSteps() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let tls = TLSTermination(defaultCertificate: try await certificates.server("paced", commonName: "paced", names: ["paced.mesh.local"]))
        // "paced" has its bandwidth from the start, "late" gets one live; HTTPS, so NIO reads their connections.
        let (paced, late) = ((listener: 17_224, upstream: 17_225), (listener: 17_226, upstream: 17_227))
        let servers = try await [paced, late].asyncMap { try await startNamedHTTPServer(port: $0.upstream, name: "U") }
        defer { for server in servers { server.stop() } }
        func configuration(lateBandwidth: Int?) -> ProxyConfiguration {
            func tenant(_ name: String, _ ports: (listener: Int, upstream: Int), bandwidth: Int?) -> TenantConfiguration {
                TenantConfiguration(name: name, listener: Endpoint(.loopback, port: UInt16(ports.listener)), upstream: .fixed(Endpoint(.loopback, port: UInt16(ports.upstream))),
                                    mode: .http(.everything(toLoopbackPort: UInt16(ports.upstream))), limits: TenantLimits(bytesPerSecond: bandwidth), tls: tls)
            }
            return ProxyConfiguration(tenants: [tenant("paced", paced, bandwidth: 100 << 20), tenant("late", late, bandwidth: lateBandwidth)])
        }
        func request(_ ports: (listener: Int, upstream: Int)) async throws -> String {
            try await offload {
                try run(["curl", "-s", "--cacert", certificates.caPath, "--resolve", "paced.mesh.local:\(ports.listener):127.0.0.1",
                         "https://paced.mesh.local:\(ports.listener)/a"]).check().output
            }
        }
        let small = 2 * TenantBuffers.cappedReceiveBuffer
        try await withProxy(configuration(lateBandwidth: nil)) { proxy in
            #expect(try await request(paced) == "U /a 0")
            let pacedSockets = try Self.upstreamSockets(paced.upstream)
            #expect(pacedSockets.count == 1 && pacedSockets.allSatisfy { $0.receiveBuffer == small }, "\(pacedSockets)")

            #expect(try await request(late) == "U /a 0")
            let before = try Self.upstreamSockets(late.upstream)
            #expect(before.count == 1 && before.allSatisfy { $0.receiveBuffer != small }, "without limits, the kernel's own: \(before)")
            try await proxy.apply(configuration(lateBandwidth: 100 << 20))
            #expect(try await request(late) == "U /a 0")
            let after = try Self.upstreamSockets(late.upstream)
            #expect(after.map(\.localPort) == before.map(\.localPort), "the pooled connection was not the one reused: \(before) then \(after)")
            #expect(after.allSatisfy { $0.receiveBuffer == small }, "\(after)")
        }
    }

    /// The proxy's open connections to an upstream on 127.0.0.1:`port`: each one's local port and receive buffer.
    private static func upstreamSockets(_ port: Int) throws -> [(localPort: Int, receiveBuffer: Int)] {
        try sockets("( dport = :\(port) )")
    }

    /// The loopback TCP sockets in `states` that the `ss` filter `filter`
    /// selects: each one's local port and kernel receive buffer (`ss -m`'s `rb`).
    private static func sockets(in states: [String] = ["established"], _ filter: String) throws -> [(localPort: Int, receiveBuffer: Int)] {
        let sockets = try run(["ss", "-Htnm"] + states.flatMap { ["state", $0] } + [filter]).check().output
        return sockets.matches(of: /127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:\d+\s+skmem:\(r\d+,rb(\d+)/).compactMap { match in
            Int(match.1).flatMap { local in Int(match.2).map { (local, $0) } }
        }
    }

    /// Most a capped tenant's stalled connections may hold: the cap and a read
    /// per connection, on every path (a TLS connection's reads, decrypted, are
    /// no larger). (Where NIO reads, a socket's end of stream can add what
    /// its receive buffer holds; the upstream here cannot end its stream while
    /// the clients stall: the kernel's buffers on the way take far less than it sends.)
    static let bound = cap + connections * TenantBuffers.cappedReadSize

    /// Two tenants on `path`, "roomy" and "capped", in front of an upstream
    /// that streams ``size`` bytes on each connection and ends.
    private struct Tenants {
        let path: Path
        let tls: TLSTermination?
        /// The clients' arguments after GO: the server name and CA of a TLS tenant.
        let tlsArguments: [String]

        func configuration(roomyCap: Int?) -> ProxyConfiguration {
            let ports = path.ports
            let upstream = Endpoint(.loopback, port: UInt16(ports.upstream))
            func tenant(_ name: String, port: Int, cap: Int?) -> TenantConfiguration {
                let mode: TenantConfiguration.Mode = path.mode == "http" ? .http(.everything(toLoopbackPort: upstream.port)) : .tcp
                return TenantConfiguration(name: name, listener: Endpoint(.loopback, port: UInt16(port)), upstream: .fixed(upstream), mode: mode,
                                           limits: TenantLimits(maxTotalBufferedBytes: cap), tls: tls)
            }
            return ProxyConfiguration(tenants: [tenant("roomy", port: ports.roomy, cap: roomyCap),
                                                tenant("capped", port: ports.capped, cap: TenantBufferCapTests.cap)])
        }

        func stallThenRead(_ tenant: String, on proxy: MeshProxy) async throws -> Stalled {
            let ports = path.ports
            return try await TenantBufferCapTests.stallThenRead(proxy, tenant: tenant, port: tenant == "roomy" ? ports.roomy : ports.capped,
                                                                upstream: ports.upstream, mode: path.clientMode, tlsArguments)
        }
    }

    /// Runs `body` with a proxy serving ``Tenants`` — "roomy" without a cap (but see TLS below) — and their upstream.
    private func withTenants(_ path: Path, _ body: (MeshProxy, Tenants) async throws -> Void) async throws {
        let server = try Background(["python3", "-c", patternStreamServer, "\(path.ports.upstream)", "\(Self.size)", path.mode])
        defer { server.stop() }
        #expect(try await awaitListeners(["127.0.0.1:\(path.ports.upstream)"], timeout: .seconds(10)))
        let certificates = path.terminatesTLS ? try await TestCertificates() : nil
        defer { certificates?.remove() }
        var tls: TLSTermination?
        if let certificates {
            tls = TLSTermination(defaultCertificate: try await certificates.server("capped", commonName: "capped", names: ["capped.mesh.local"]))
        }
        let group = path == .tcpOnSharedLoop ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        defer { group?.shutdownGracefully { _ in } }
        let tenants = Tenants(path: path, tls: tls, tlsArguments: certificates.map { ["capped.mesh.local", $0.caPath] } ?? [])
        // (What NIO holds of a TLS output is counted only for a tenant with a cap: the roomy one gets one it never reaches.)
        try await withProxy(tenants.configuration(roomyCap: path.terminatesTLS ? 1 << 30 : nil), group: group) { proxy in
            try await body(proxy, tenants)
        }
    }

    /// What a tenant's stalled connections did.
    private struct Stalled {
        /// The most the tenant held.
        var mostHeld: Int
        /// The waits counted.
        var waits: Int
        /// The kernel receive buffers (`ss`'s `rb`) of the proxy's sockets to the clients and the upstream.
        var receiveBuffers: [Int]
    }

    /// Starts the clients against `tenant`, and once its connections hold
    /// bytes, samples what the tenant holds for a second and its sockets'
    /// receive buffers; then lets the clients read.
    private static func stallThenRead(_ proxy: MeshProxy, tenant: String, port: Int, upstream: Int, mode: String,
                                      _ tlsArguments: [String]) async throws -> Stalled {
        let clients = try Readers(port: port, count: connections, mode: mode, tlsArguments)
        defer { clients.stop() }
        // Held once the kernel's buffers on the way are full: a read's worth, or the cap's half, in total.
        let filled = await eventually(timeout: .seconds(60)) {
            (proxy.statistics(tenant)?.bufferedBytes ?? 0) >= min(cap / 2, connections * 16_384)
        }
        #expect(filled, "\(tenant): its stalled connections never held bytes: \(String(describing: proxy.statistics(tenant)))")
        var mostHeld = 0
        let clock = ContinuousClock()
        let end = clock.now + .seconds(1)
        while clock.now < end {
            mostHeld = max(mostHeld, proxy.statistics(tenant)?.bufferedBytes ?? 0)
            try await Task.sleep(for: .milliseconds(5))
        }
        let receiveBuffers = try receiveBuffers(listener: port, upstream: upstream)
        await clients.read(within: .seconds(120), "\(tenant)'s clients")
        #expect(await eventually(timeout: .seconds(10)) { proxy.statistics(tenant)?.bufferedBytes == 0 },
                "\(tenant) still holds \(String(describing: proxy.statistics(tenant)?.bufferedBytes)) bytes")
        return Stalled(mostHeld: mostHeld, waits: proxy.statistics(tenant)?.bufferWaits ?? -1, receiveBuffers: receiveBuffers)
    }

    /// The capped tenant held at its cap by ``connections`` clients that do not read yet.
    private struct CapFilled {
        /// A folder of the test's own (removed after it).
        let folder: URL
        /// The capped tenant's listener.
        let port: Int
        /// The clients holding the cap.
        let others: Readers
        /// Where the tenant's connections are served.
        let path: Path
        /// The clients' arguments after GO (``Tenants/tlsArguments``).
        let tlsArguments: [String]
        /// What the tenant holds now.
        let held: @Sendable () -> Int
        /// The waits on the cap counted so far.
        let waits: @Sendable () -> Int

        /// One more client of the capped tenant, not reading yet, returned once
        /// its connection holds bytes of its own and waits on the cap. (Nothing
        /// makes room meanwhile: the only new wait counted is its.)
        func waitingReader() async throws -> Readers {
            let waitsBefore = waits()
            let reader = try Readers(port: port, count: 1, mode: path.clientMode, tlsArguments)
            #expect(await eventually(timeout: .seconds(30)) { waits() > waitsBefore }, "the new connection never waited on the cap")
            return reader
        }

        /// Lets the clients holding the cap read, and checks that each read its stream whole.
        func letOthersRead() async throws {
            await others.read(within: .seconds(120), "the clients holding the cap")
        }
    }

    /// Runs `body` with ``Tenants`` on `path` whose capped tenant ``CapFilled`` holds at its cap.
    private func withCapFilled(_ path: Path, _ body: (MeshProxy, Tenants, CapFilled) async throws -> Void) async throws {
        try await withTenants(path) { proxy, tenants in
            let folder = try makeTemporaryDirectory("buffer-cap-filled")
            defer { try? FileManager.default.removeItem(at: folder) }
            let port = path.ports.capped
            let others = try Readers(port: port, count: Self.connections, mode: path.clientMode, tenants.tlsArguments)
            defer { others.stop() }
            let held: @Sendable () -> Int = { proxy.statistics("capped")?.bufferedBytes ?? 0 }
            #expect(await eventually(timeout: .seconds(60)) { held() >= Self.cap }, "the stalled connections never filled the cap: \(held())")
            try await body(proxy, tenants, CapFilled(folder: folder, port: port, others: others, path: path, tlsArguments: tenants.tlsArguments,
                                                     held: held, waits: { proxy.statistics("capped")?.bufferWaits ?? 0 }))
        }
    }

    /// `count` clients of the listener on `port` in `mode` (with the server
    /// name and CA of a TLS tenant in `tlsArguments`), each asking for a
    /// stream of ``size`` bytes and reading it only once let (``read(within:_:)``),
    /// or after 300 s. ``stop()`` them in a `defer`.
    private struct Readers {
        let count: Int
        private let clients: Background
        private let go: GoSignal

        init(port: Int, count: Int, mode: String, _ tlsArguments: [String]) throws {
            self.count = count
            go = try GoSignal()
            do {
                clients = try Background(["python3", "-c", stalledReaders, "127.0.0.1", "\(port)", "\(count)", "\(size)", mode, go.path] + tlsArguments)
            } catch {
                go.remove()
                throw error
            }
        }

        /// Whether the clients are still there.
        var areRunning: Bool { clients.isRunning }

        /// Lets the clients read, and checks that each read its stream whole within `timeout`.
        func read(within timeout: Duration, _ who: String, sourceLocation: SourceLocation = #_sourceLocation) async {
            #expect(go.give(), sourceLocation: sourceLocation)
            let results = await clients.finish(timeout: timeout)
            #expect(results == Array(repeating: "ok", count: count).joined(separator: " ") + "\n", "\(who): \(results)", sourceLocation: sourceLocation)
        }

        func stop() {
            clients.stop()
            go.remove()
        }
    }

    /// The receive buffers (`rb` in `ss -m`) of the open sockets accepted on `listener`
    /// and of those connected to `upstream` (all the proxy's: the upstream only
    /// accepts). (Half-closed ones too: L4 clients end their output at once.)
    private static func receiveBuffers(listener: Int, upstream: Int) throws -> [Int] {
        try sockets(in: ["established", "close-wait", "fin-wait-1", "fin-wait-2"], "( sport = :\(listener) or dport = :\(upstream) )").map(\.receiveBuffer)
    }
}
