import Foundation
import MeshTestSupport
import Testing

/// Bad input against the `mesh-proxy` program, whose open descriptors are
/// its own to count: whatever a client does, the proxy keeps nothing of it.
@Suite("MeshProxy keeps nothing of bad input")
struct BadInputLeakTests {
    /// The descriptors process `pid` has open.
    private func openDescriptors(of pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// What process `pid`'s descriptors are open on (`socket:[inode]`, `anon_inode:[eventpoll]`, paths), by descriptor.
    private func descriptorTargets(of pid: pid_t) -> [String: String] {
        let folder = "/proc/\(pid)/fd"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return Dictionary(uniqueKeysWithValues: names.map { ($0, (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(folder)/\($0)")) ?? "?") })
    }

    /// Waits until `pid`'s descriptor count settles (the proxy closes
    /// asynchronously), and returns it; nil if it never settles.
    /// (Afterwards the test waits for the count it had, which a kept descriptor never reaches again.)
    private func settledDescriptors(of pid: pid_t) async -> Int? {
        // The least count of a 300 ms window, the same twice running: descriptors open for a
        // moment (the proxy's balancing thread reads /proc every 100 ms) only add to a count.
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(15)
        var last = -1
        while clock.now < deadline {
            var least = Int.max
            let windowEnd = clock.now + .milliseconds(300)
            while clock.now < windowEnd {
                least = min(least, openDescriptors(of: pid))
                try? await Task.sleep(for: .milliseconds(2))
            }
            if least == last { return least }
            last = least
        }
        return nil
    }

    @Test("malformed requests, oversized headers, smuggling, garbage after a request, a body cut short, a response reset midway, a flood of 200 connections over a tenant's limit of 2 (another tenant answering meanwhile), refused L4 upstreams, plaintext and a cut handshake to TLS: the mesh-proxy program answers or closes each, and then holds as many descriptors as before")
    func nothingKept() async throws {
        let certificates = try await TestCertificates()
        defer { certificates.remove() }
        let files = try await certificates.server("kept", commonName: "kept", names: ["kept.mesh.local"])
        let server = try await startNamedHTTPServer(port: 17_186, name: "K")
        defer { server.stop() }
        // Nothing listens on 17_188: the L4 tenant's upstream refuses.
        let proxy = try Background([meshProxyProgram, "--metrics", "127.0.0.1:17255",
                                    "--tenant", "web=127.0.0.1:17185,upstream=127.0.0.1:17186,mode=http,max-buffered-bytes=65536",
                                    "--tenant", "stream=127.0.0.1:17187,upstream=127.0.0.1:17188",
                                    "--tenant", "secure=127.0.0.1:17189,upstream=127.0.0.1:17186,mode=http,cert=\(files.chainPath),key=\(files.privateKeyPath)",
                                    "--tenant", "small=127.0.0.1:17190,upstream=127.0.0.1:17186,mode=http,max-connections=2"])
        defer { proxy.stop() }
        #expect(try await awaitListeners(["127.0.0.1:17185", "127.0.0.1:17187", "127.0.0.1:17189", "127.0.0.1:17190", "127.0.0.1:17255"]))

        /// A good request through each tenant: each has started what it keeps
        /// (threads, loops, a pooled upstream connection) once it has answered.
        func goodRequests() async throws -> String {
            try await offload {
                try run(["sh", "-c", """
                    curl -s http://127.0.0.1:17185/ok; curl -s http://127.0.0.1:17190/ok
                    curl -s --cacert \(certificates.caPath) --resolve kept.mesh.local:17189:127.0.0.1 https://kept.mesh.local:17189/ok
                    """]).check().output
            }
        }
        #expect(try await goodRequests() == "K /ok 0K /ok 0K /ok 0")
        let before = try #require(await settledDescriptors(of: proxy.pid), "the proxy's descriptors never settled")
        let targetsBefore = descriptorTargets(of: proxy.pid)

        let seen = try await offload { try run(["python3", "-c", badInputs, "17185", "17187", "17189", "17190"], timeout: .seconds(60)).check().output }
        let cases = Dictionary(uniqueKeysWithValues: seen.split(separator: "\n").map { line -> (String, String) in
            let words = line.split(separator: " ", maxSplits: 1)
            return (String(words[0]), words.count > 1 ? String(words[1]) : "")
        })
        #expect(cases["malformed"] == "400 closed", "\(seen)")
        #expect(cases["smuggling"] == "400 closed", "\(seen)")
        #expect(cases["garbage-after-a-request"] == "200 400 closed", "\(seen)")
        // (The proxy may close before it has read the whole head: the client's send then fails.)
        #expect(cases["oversized"] == "431 closed" || cases["oversized"]?.hasSuffix("Error") == true, "\(seen)")
        #expect(cases["reset-midway"] == "200 reset", "\(seen)")
        // A flood over one tenant's connection limit is that tenant's trouble: another tenant answers meanwhile.
        #expect(cases["flood"] == "200 connected, meanwhile 200 closed", "\(seen)")
        // Each of the flood's connections was refused by that tenant's limit or admitted under it (as others
        // closed), and counted as one or the other: all 200 of them and the good request's, some refused.
        func smallTenant() -> (accepted: Double, refused: Double) {
            let exposition = (try? run(["curl", "-s", "http://127.0.0.1:17255/metrics"]).output) ?? ""
            func count(_ outcome: String) -> Double {
                let prefix = #"mesh_proxy_connections_total{tenant="small",outcome=""# + outcome + #""} "#
                return exposition.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) } ?? -1
            }
            return (count("accepted"), count("refused_limit"))
        }
        _ = await eventually(timeout: .seconds(10)) { let counted = smallTenant(); return counted.accepted + counted.refused >= 201 }
        let counted = smallTenant()
        #expect(counted.accepted + counted.refused == 201 && counted.refused >= 1, "small tenant's connections: \(counted)")
        #expect(cases["body-cut-short"] != nil && cases["tls-cut-short"] != nil, "\(seen)")
        // (Closed with the client's byte unread, a connection may end in a reset.)
        #expect(cases["l4-refused"] == "closed" || cases["l4-refused"] == "ConnectionResetError closed" || cases["l4-refused"] == "ConnectionResetError", "\(seen)")
        #expect(cases["tls-plaintext"] == "closed", "\(seen)")

        // The proxy still serves (once it has seen the flood's connections close: until then the
        // small tenant is at its limit), and holds what it held before.
        let deadline = ContinuousClock.now + .seconds(10)
        var served = try await goodRequests()
        while served != "K /ok 0K /ok 0K /ok 0", ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            served = try await goodRequests()
        }
        #expect(served == "K /ok 0K /ok 0K /ok 0")
        let back = await eventually(timeout: .seconds(15)) { openDescriptors(of: proxy.pid) == before }
        let targetsAfter = descriptorTargets(of: proxy.pid)
        #expect(back, "\(before) descriptors before the bad input, \(targetsAfter.count) 15 s after it: new \(targetsAfter.filter { targetsBefore[$0.key] != $0.value }), gone \(targetsBefore.filter { targetsAfter[$0.key] != $0.value })")
        #expect(proxy.isRunning)
    }
}
