import Foundation
import MeshKernel
import MeshProxy
import MeshTestSupport
import Testing

/// TLS termination and origination over real sockets, with certificates
/// made for each test and real clients (curl, openssl s_client, Python's ssl).
@Suite("MeshProxy TLS", .serialized)
struct TLSTests {
    private let loopback = IPAddress.loopback

    private func routing(to port: UInt16, tls: UpstreamTLS? = nil) -> TenantConfiguration.Mode {
        .http(.everything(toLoopbackPort: port, tls: tls))
    }

    /// The common name of the certificate the proxy presents for `serverName` (none sent when nil).
    private func presentedName(port: Int, serverName: String?) async throws -> String {
        let sni = serverName.map { "-servername \($0)" } ?? "-noservername"
        let output = try await offload {
            try run(["sh", "-c", "openssl s_client -connect 127.0.0.1:\(port) \(sni) </dev/null 2>/dev/null | openssl x509 -noout -subject"]).output
        }
        return output.components(separatedBy: "CN = ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? output
    }

    @Test("SNI picks the certificate (exact name, wildcard, default); a reload gives new connections the new certificate while an open one goes on; a bad file changes nothing")
    func sniAndReload() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let shop = try await certificates.server("shop", commonName: "shop-v1", names: ["shop.mesh.local"])
        let blog = try await certificates.server("blog", commonName: "blog-wildcard", names: ["*.blog.mesh.local"])
        let fallback = try await certificates.server("default", commonName: "default", names: ["default.mesh.local"])
        let server = try await startNamedHTTPServer(port: 17122, name: "S")
        defer { server.stop() }
        let tls = TLSTermination(certificates: ["shop.mesh.local": shop, "*.blog.mesh.local": blog], defaultCertificate: fallback)
        let tenant = TenantConfiguration(name: "web", listener: Endpoint(loopback, port: 17_071), mode: routing(to: 17_122), tls: tls)
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let body = try await offload {
                try run(["curl", "-s", "--cacert", certificates.caPath, "--resolve", "shop.mesh.local:17071:127.0.0.1",
                         "https://shop.mesh.local:17071/a"]).check().output
            }
            #expect(body == "S /a 0")
            #expect(try await presentedName(port: 17_071, serverName: "shop.mesh.local") == "shop-v1")
            #expect(try await presentedName(port: 17_071, serverName: "news.blog.mesh.local") == "blog-wildcard")
            #expect(try await presentedName(port: 17_071, serverName: "other.example") == "default")
            #expect(try await presentedName(port: 17_071, serverName: nil) == "default")

            // A connection made before the reload.
            let go = try GoSignal()
            defer { go.remove() }
            let held = try Background(["python3", "-c", holdingTLSClient, "127.0.0.1", "17071", "shop.mesh.local", certificates.caPath, go.path])
            defer { held.stop() }
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("web")?.requestsRouted == 2 })
            try await certificates.server("shop", commonName: "shop-v2", names: ["shop.mesh.local"])
            try proxy.reloadCertificates()
            #expect(try await presentedName(port: 17_071, serverName: "shop.mesh.local") == "shop-v2")
            #expect(go.give())
            #expect(await held.finish() == "connected\n200 200 shop-v1\n")

            // A key that is not a key: the reload is refused with its field, and the last good certificates stay.
            try Data("not a key".utf8).write(to: URL(fileURLWithPath: shop.privateKeyPath))
            let error = #expect(throws: ProxyConfigurationError.self) { try proxy.reloadCertificates() }
            #expect(error?.tenant == "web" && error?.field == "tls.certificates[shop.mesh.local]", "\(String(describing: error))")
            #expect(try await presentedName(port: 17_071, serverName: "shop.mesh.local") == "shop-v2")
        }
    }

    @Test("the mesh-proxy program terminates TLS with a tenant's cert and key, and SIGHUP makes it read them again")
    func programReloadsOnHangUp() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let files = try await certificates.server("program", commonName: "program-v1", names: ["program.mesh.local"])
        let server = try await startNamedHTTPServer(port: 17140, name: "G")
        defer { server.stop() }
        let proxy = try Background([meshProxyProgram, "--tenant", "prog=127.0.0.1:17084,upstream=127.0.0.1:17140,mode=http,cert=\(files.chainPath),key=\(files.privateKeyPath)"])
        defer { proxy.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17084", "127.0.0.1:17140"]))
        let body = try await offload {
            try run(["curl", "-s", "--cacert", certificates.caPath, "--resolve", "program.mesh.local:17084:127.0.0.1",
                     "https://program.mesh.local:17084/p"]).check().output
        }
        #expect(body == "G /p 0")
        #expect(try await presentedName(port: 17_084, serverName: "program.mesh.local") == "program-v1")
        try await certificates.server("program", commonName: "program-v2", names: ["program.mesh.local"])
        kill(proxy.pid, SIGHUP)
        #expect(await eventually(timeout: .seconds(10)) {
            (try? run(["sh", "-c", "openssl s_client -connect 127.0.0.1:17084 -servername program.mesh.local </dev/null 2>/dev/null | openssl x509 -noout -subject"]).output)?
                .contains("program-v2") ?? false
        })
        #expect(await proxy.terminate() == 0)
    }

    @Test("through TLS termination every byte of requests and responses arrives as sent (random bodies around a read's size, both framings both ways, responses until close)")
    func bodiesArriveIntact() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let certificate = try await certificates.server("bodies", commonName: "bodies", names: ["bodies.mesh.local"])
        let server = try await startServer(integrityServer, named: "integrityServer", port: 17_180)
        defer { server.stop() }
        let tenant = TenantConfiguration(name: "bodies", listener: Endpoint(loopback, port: 17_179), mode: routing(to: 17_180),
                                         tls: TLSTermination(certificates: ["bodies.mesh.local": certificate]))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let verdict = try await checkBodyIntegrity(port: 17_179, tls: (certificates.caPath, "bodies.mesh.local"))
            #expect(verdict == "ok 120")
            #expect(proxy.statistics("bodies")?.upstreamFailures == 0)
        }
    }

    @Test("under mutual TLS the client certificate's SPIFFE ID is the source that HTTP authorization rules match: one identity may GET a path, another identity, another method and another path are 403 with the reason, default-deny, and counted")
    func identityAuthorization() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let serverCertificate = try await certificates.server("server", commonName: "authz", names: ["authz.mesh.local"])
        let web = try await certificates.workload("web", identity: "spiffe://mesh.local/ns/shop/sa/web")
        let batch = try await certificates.workload("batch", identity: "spiffe://mesh.local/ns/shop/sa/batch")
        let server = try await startNamedHTTPServer(port: 17_197, name: "Z")
        defer { server.stop() }
        // Any identity the CA vouches for is admitted at the handshake; the rules decide per request.
        let tls = TLSTermination(defaultCertificate: serverCertificate,
                                 clientAuthentication: ClientAuthentication(trustRootsPath: certificates.caPath, allowedIdentities: []))
        let authorization = HTTPAuthorization(rules: [HTTPAuthorizationRule(.allow, sources: [.spiffe("spiffe://mesh.local/ns/shop/sa/web")],
                                                                            methods: ["GET"], pathPrefix: "/orders")],
                                              defaultAction: .deny)
        let tenant = TenantConfiguration(name: "authz", listener: Endpoint(loopback, port: 17_196),
                                         mode: .http(.everything(toLoopbackPort: 17_197, authorization: authorization)), tls: tls)
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            func request(_ who: CertificateFiles, _ arguments: [String]) async throws -> String {
                try await offload {
                    try run(["curl", "-s", "-w", " %{http_code}", "--cacert", certificates.caPath, "--resolve", "authz.mesh.local:17196:127.0.0.1",
                             "--cert", who.chainPath, "--key", who.privateKeyPath] + arguments).check().output
                }
            }
            #expect(try await request(web, ["https://authz.mesh.local:17196/orders/1"]) == "Z /orders/1 0 200")
            let otherIdentity = try await request(batch, ["https://authz.mesh.local:17196/orders/1"])
            #expect(otherIdentity.hasSuffix(" 403") && otherIdentity.contains("spiffe://mesh.local/ns/shop/sa/batch"), "\(otherIdentity)")
            let otherMethod = try await request(web, ["-X", "DELETE", "https://authz.mesh.local:17196/orders/1"])
            #expect(otherMethod.hasSuffix(" 403"), "\(otherMethod)")
            let otherPath = try await request(web, ["https://authz.mesh.local:17196/admin"])
            #expect(otherPath.hasSuffix(" 403"), "\(otherPath)")
            #expect(proxy.statistics("authz")?.forbiddenRequests == 3)
            #expect(proxy.statistics("authz")?.tlsRefusals == 0)
        }
    }

    @Test("mutual TLS admits only allowed workload identities; no certificate, a wrong identity, garbage and a stalled handshake are refused and counted")
    func mutualTLS() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let serverCertificate = try await certificates.server("server", commonName: "secure", names: ["secure.mesh.local"])
        let web = try await certificates.workload("web", identity: "spiffe://mesh.local/ns/shop/sa/web")
        let intruder = try await certificates.workload("intruder", identity: "spiffe://mesh.local/ns/other/sa/intruder")
        // Allowed among others: a workload certificate must name exactly one identity.
        let twoFaced = try await certificates.workload("twofaced", identity: "spiffe://mesh.local/ns/other/sa/admin", "spiffe://mesh.local/ns/shop/sa/web")
        let server = try await startNamedHTTPServer(port: 17123, name: "M")
        defer { server.stop() }
        let tls = TLSTermination(defaultCertificate: serverCertificate,
                                 clientAuthentication: ClientAuthentication(trustRootsPath: certificates.caPath,
                                                                            allowedIdentities: ["spiffe://mesh.local/ns/shop/sa/web"]),
                                 handshakeTimeout: .seconds(1))
        let tenant = TenantConfiguration(name: "secure", listener: Endpoint(loopback, port: 17_072), mode: routing(to: 17_123), tls: tls)
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            func curl(_ extra: [String]) async throws -> ProcessResult {
                try await offload {
                    try run(["curl", "-s", "--cacert", certificates.caPath, "--resolve", "secure.mesh.local:17072:127.0.0.1"] + extra
                            + ["https://secure.mesh.local:17072/in"])
                }
            }
            #expect(try await curl(["--cert", web.chainPath, "--key", web.privateKeyPath]).output == "M /in 0")
            #expect(proxy.statistics("secure")?.tlsRefusals == 0)
            let wrong = try await curl(["--cert", intruder.chainPath, "--key", intruder.privateKeyPath])
            #expect(wrong.status != 0 && wrong.output.isEmpty)
            #expect(await eventually { proxy.statistics("secure")?.tlsRefusals == 1 })
            let doubled = try await curl(["--cert", twoFaced.chainPath, "--key", twoFaced.privateKeyPath])
            #expect(doubled.status != 0 && doubled.output.isEmpty)
            #expect(await eventually { proxy.statistics("secure")?.tlsRefusals == 2 })
            let anonymous = try await curl([])
            #expect(anonymous.status != 0 && anonymous.output.isEmpty)
            #expect(await eventually { proxy.statistics("secure")?.tlsRefusals == 3 })
            // Not TLS at all, then a client that stops in the middle of its handshake.
            let garbage = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", "17072", #"b"GET / HTTP/1.1\r\nHost: h\r\n\r\n""#, "0"]).output
            }
            #expect(garbage == " closed\n", "\(garbage)")
            #expect(await eventually { proxy.statistics("secure")?.tlsRefusals == 4 })
            let stalled = try await offload {
                try run(["python3", "-c", rawHTTPClient, "127.0.0.1", "17072", #"b"\x16\x03\x01\x02\x00\x01""#, "0"]).output
            }
            #expect(stalled == " closed\n", "\(stalled)")
            #expect(await eventually { proxy.statistics("secure")?.tlsRefusals == 5 })
            // And the allowed workload is still served.
            #expect(try await curl(["--cert", web.chainPath, "--key", web.privateKeyPath]).output == "M /in 0")
            #expect(proxy.statistics("secure")?.requestsRouted == 2)
        }
    }

    @Test("TLS origination: requests reach an HTTPS upstream whose certificate is checked against its name; a wrong name is 502")
    func origination() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let backend = try await certificates.server("backend", commonName: "backend", names: ["backend.mesh.local"])
        let server = try Background(["python3", "-c", httpsServer, "17124", backend.chainPath, backend.privateKeyPath])
        defer { server.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17124"], timeout: .seconds(10)))
        let good = TenantConfiguration(name: "good", listener: Endpoint(loopback, port: 17_073),
                                       mode: routing(to: 17_124, tls: UpstreamTLS(trustRootsPath: certificates.caPath, serverName: "backend.mesh.local")))
        let misnamed = TenantConfiguration(name: "misnamed", listener: Endpoint(loopback, port: 17_074),
                                           mode: routing(to: 17_124, tls: UpstreamTLS(trustRootsPath: certificates.caPath, serverName: "elsewhere.mesh.local")))
        try await withProxy(ProxyConfiguration(tenants: [good, misnamed])) { proxy in
            let body = try await offload { try run(["curl", "-s", "http://127.0.0.1:17073/over-tls"]).check().output }
            #expect(body == "tls /over-tls")
            let refused = try await offload { try run(["curl", "-s", "-w", " %{http_code}", "http://127.0.0.1:17074/x"]).check().output }
            #expect(refused.hasSuffix(" 502") && refused.contains("closed before responding"), "\(refused)")
            // A GET without a body is tried once more (the cluster's one retry), and fails the same way.
            #expect(proxy.statistics("misnamed")?.upstreamFailures == 2)
            #expect(proxy.statistics("misnamed")?.retriedRequests == 1)
        }
    }

    @Test("an L4 tenant terminating TLS (spliced in NIO) delivers the whole of a response whose upstream closes at once to a reader that waits first")
    func spliceCloseAfterPendingWrites() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let serverCertificate = try await certificates.server("bulk", commonName: "bulk", names: ["bulk.mesh.local"])
        let size = 4 << 20
        let bulk = try Background(["python3", "-c", bulkServer, "17233", "\(size)", "first-byte"])
        defer { bulk.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17233"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "bulk-tls", listener: Endpoint(loopback, port: 17_234), upstream: .fixed(Endpoint(loopback, port: 17_233)),
                                         limits: TenantLimits(maxBufferedBytes: 65_536), tls: TLSTermination(defaultCertificate: serverCertificate))
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            let received = try await offload {
                try run(["python3", "-c", slowReader, "127.0.0.1", "17234", "bulk.mesh.local", certificates.caPath]).check().output
            }
            #expect(received == "\(size)\n", "the upstream's close cut the response short")
            #expect(await eventually { proxy.statistics("bulk-tls")?.bytesFromUpstreams == size }, "\(String(describing: proxy.statistics("bulk-tls")))")
        }
    }

    @Test("an L4 tenant terminates TLS and splices the plaintext; unusable certificate files are refused at configuration, a new proxy's or a running one's, with their field, and the running tenant goes on")
    func spliceAndBadFiles() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let serverCertificate = try await certificates.server("stream", commonName: "stream", names: ["stream.mesh.local"])
        let echo = try Background(["python3", "-c", echoServer, "17125"])
        defer { echo.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17125"], timeout: .seconds(10)))
        let tenant = TenantConfiguration(name: "stream", listener: Endpoint(loopback, port: 17_075), upstream: .fixed(Endpoint(loopback, port: 17_125)),
                                         tls: TLSTermination(certificates: ["stream.mesh.local": serverCertificate]))
        let other = try await certificates.server("other", commonName: "other", names: ["other.mesh.local"])
        try await withProxy(ProxyConfiguration(tenants: [tenant])) { proxy in
            func echoes() async throws -> Bool {
                try await offload {
                    try run(["python3", "-c", tlsEchoClient, "127.0.0.1", "17075", "stream.mesh.local", certificates.caPath, "1000000"]).check().output
                } == "ok\n"
            }
            let served = try await echoes()
            #expect(served)
            // A missing file, and a key that belongs to another certificate: refused by a new proxy, and
            // by the running one, whose tenant goes on with its certificate.
            for (files, what) in [(CertificateFiles(chainPath: certificates.path("missing.pem"), privateKeyPath: serverCertificate.privateKeyPath), "missing"),
                                  (CertificateFiles(chainPath: serverCertificate.chainPath, privateKeyPath: other.privateKeyPath), "mismatched")] {
                var broken = tenant
                broken.tls = TLSTermination(certificates: ["stream.mesh.local": files])
                let error = #expect(throws: ProxyConfigurationError.self, "\(what)") {
                    _ = try MeshProxy(configuration: ProxyConfiguration(tenants: [broken]), logger: .init(label: "test"))
                }
                #expect(error?.field == "tls.certificates[stream.mesh.local]", "\(what): \(String(describing: error))")
                let applied = await #expect(throws: ProxyConfigurationError.self, "\(what), applied live") {
                    try await proxy.apply(ProxyConfiguration(tenants: [broken]))
                }
                #expect(applied?.tenant == "stream" && applied?.field == "tls.certificates[stream.mesh.local]", "\(what): \(String(describing: applied))")
                let stillServed = try await echoes()
                #expect(stillServed, "\(what): the running tenant stopped serving")
            }
        }
    }
}
