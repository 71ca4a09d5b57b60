import Foundation
import MeshProxy
import MeshTestSupport

/// A certificate authority made for one test with Debian's `openssl`, in a
/// directory of its own that ``remove()`` deletes, and the certificates it issues.
final class TestCertificates: Sendable {
    let directory: URL
    var caPath: String { path("ca.pem") }

    init() async throws {
        directory = try makeTemporaryDirectory("certs")
        try await openssl("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=mesh test CA'")
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// A server certificate for DNS `names`, with common name `commonName`, in FILE.pem and FILE.key.
    @discardableResult
    func server(_ file: String, commonName: String, names: [String]) async throws -> CertificateFiles {
        try await issue(file, commonName: commonName, extensions: "subjectAltName=\(names.map { "DNS:\($0)" }.joined(separator: ","))\nextendedKeyUsage=serverAuth")
    }

    /// A workload (client) certificate carrying the SPIFFE IDs `identities` as its URI SANs.
    func workload(_ file: String, identity: String...) async throws -> CertificateFiles {
        try await issue(file, commonName: file, extensions: "subjectAltName=\(identity.map { "URI:\($0)" }.joined(separator: ","))\nextendedKeyUsage=clientAuth")
    }

    private func issue(_ file: String, commonName: String, extensions: String) async throws -> CertificateFiles {
        try Data(extensions.utf8).write(to: directory.appendingPathComponent("\(file).ext"))
        try await openssl("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout \(file).key -out \(file).csr -subj '/CN=\(commonName)'")
        try await openssl("x509 -req -in \(file).csr -CA ca.pem -CAkey ca.key -CAcreateserial -out \(file).pem -days 2 -extfile \(file).ext")
        return CertificateFiles(chainPath: path("\(file).pem"), privateKeyPath: path("\(file).key"))
    }

    /// Runs openssl on a thread of its own (key generation takes a while; the pool's threads are few).
    private func openssl(_ arguments: String) async throws {
        let command = "cd '\(directory.path)' && openssl \(arguments)"
        _ = try await offload { try run(["sh", "-c", command]).check() }
    }
}
