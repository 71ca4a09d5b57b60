import Logging
import MeshKernel
import MeshProxy
import MeshTestSupport
import Synchronization
import Testing

/// What a ``RecordingLogHandler`` was given, in order.
final class LogRecord: Sendable {
    /// One log event: its level, message and metadata (the handler's and the event's).
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    /// Every event so far.
    var all: [Entry] { entries.withLock { $0 } }

    fileprivate func append(_ entry: Entry) { entries.withLock { $0.append(entry) } }

    /// The events whose message is `message`.
    func entries(_ message: String) -> [Entry] { all.filter { $0.message == message } }

    /// A logger at `level` whose events go to this record only.
    func logger(level: Logger.Level = .debug) -> Logger {
        var logger = Logger(label: "recorded") { _ in RecordingLogHandler(record: self) }
        logger.logLevel = level
        return logger
    }
}

/// A log handler that keeps every event in a ``LogRecord``.
struct RecordingLogHandler: LogHandler {
    let record: LogRecord
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        record.append(.init(level: event.level, message: event.message.description, metadata: merged.mapValues(\.description)))
    }
}

@Suite("MeshProxy logs through the logger it is given")
struct LoggingTests {
    @Test("the proxy logs to the Logger passed in, with the tenant and the cause as metadata: serving, an unreachable upstream, a TLS handshake refused, a configuration applied, the stop — and not above debug level for one connection's trouble")
    func structuredLogs() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let certificate = try await certificates.server("logged", commonName: "logged", names: ["logged.mesh.local"])
        // Nothing listens on 17_182 or 17_184.
        let plain = TenantConfiguration(name: "plain", listener: Endpoint(.loopback, port: 17_181), upstream: .fixed(Endpoint(.loopback, port: 17_182)))
        let secure = TenantConfiguration(name: "secure", listener: Endpoint(.loopback, port: 17_183), mode: .http(.everything(toLoopbackPort: 17_184)),
                                         tls: TLSTermination(certificates: ["logged.mesh.local": certificate]))
        let record = LogRecord()
        try await withProxy(ProxyConfiguration(tenants: [plain, secure]), logger: record.logger()) { proxy in
            // (Logged just after the tenants are published, which is what the proxy's start is waited on.)
            #expect(await eventually { !record.entries("proxy serving").isEmpty })
            #expect(record.entries("proxy serving").map(\.metadata) == [["tenants": #"["plain", "secure"]"#]])

            // The client's connection is closed as its upstream is refused.
            let refused = try await offload { try run(["python3", "-c", echoClient, "127.0.0.1", "17181", "10"]).output }
            #expect(!refused.hasPrefix("ok"), "\(refused)")
            #expect(await eventually { !record.entries("upstream unreachable").isEmpty })
            let unreachable = try #require(record.entries("upstream unreachable").first)
            #expect(unreachable.level == .debug)
            #expect(unreachable.metadata["tenant"] == "plain" && unreachable.metadata["upstream"]?.hasSuffix("127.0.0.1:17182") == true,
                    "\(unreachable.metadata)")
            #expect(unreachable.metadata["error"]?.isEmpty == false)

            let garbage = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", "17183", #"b"GET / HTTP/1.1\r\nHost: h\r\n\r\n""#, "0"]).output
            }
            #expect(garbage == " closed\n", "\(garbage)")
            #expect(await eventually { !record.entries("TLS refused").isEmpty })
            let tls = try #require(record.entries("TLS refused").first)
            #expect(tls.level == .debug && tls.metadata["tenant"] == "secure" && tls.metadata["reason"]?.isEmpty == false, "\(tls)")

            try await proxy.apply(ProxyConfiguration(tenants: [plain]))
            #expect(record.entries("proxy configuration applied").map(\.metadata) == [["tenants": #"["plain"]"#]])
        }
        #expect(record.entries("proxy stopped").count == 1)
        // One connection's trouble is debug; nothing here was worse than info.
        #expect(record.all.allSatisfy { $0.level <= .info }, "\(record.all.filter { $0.level > .info })")
    }
}
