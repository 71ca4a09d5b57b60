import NIOSSL

/// A tenant's TLS material, read from its files: the server contexts of its
/// listener by server name, and the client contexts of its HTTP clusters.
/// Made whole or not at all, so a bad file never replaces working material.
struct TenantSecrets: Sendable {
    /// The listener's contexts (nil: the listener is plain TCP).
    let termination: TerminationContexts?
    /// Client contexts by cluster name, for clusters with ``UpstreamTLS``.
    let clusters: [String: NIOSSLContext]

    /// Plain TCP everywhere.
    static let none = TenantSecrets(termination: nil, clusters: [:])

    /// Reads every file the tenant names; a file that cannot be used is thrown
    /// with its field and the TLS library's reason.
    static func load(_ tenant: TenantConfiguration) throws(ProxyConfigurationError) -> TenantSecrets {
        func refuse(_ field: String, _ error: any Error) -> ProxyConfigurationError {
            ProxyConfigurationError(tenant: tenant.name, field: field, reason: "cannot be used: \(error)")
        }
        var termination: TerminationContexts?
        if let tls = tenant.tls {
            var contexts: [String: NIOSSLContext] = [:]
            for (name, files) in tls.certificates {
                do { contexts[name.lowercased()] = try serverContext(files, clientAuthentication: tls.clientAuthentication) } catch {
                    throw refuse("tls.certificates[\(name)]", error)
                }
            }
            var fallback: NIOSSLContext?
            if let files = tls.defaultCertificate {
                do { fallback = try serverContext(files, clientAuthentication: tls.clientAuthentication) } catch {
                    throw refuse("tls.defaultCertificate", error)
                }
            }
            termination = TerminationContexts(byName: contexts, fallback: fallback, settings: tls)
        }
        var clusters: [String: NIOSSLContext] = [:]
        if case .http(let routing) = tenant.mode {
            for (name, cluster) in routing.clusters {
                guard let tls = cluster.tls else { continue }
                do { clusters[name] = try clientContext(tls) } catch { throw refuse("http.clusters[\(name)].tls", error) }
            }
        }
        return TenantSecrets(termination: termination, clusters: clusters)
    }

    private static func serverContext(_ files: CertificateFiles, clientAuthentication: ClientAuthentication?) throws -> NIOSSLContext {
        let (chain, key) = try identity(files)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        configuration.minimumTLSVersion = .tlsv12
        if let clientAuthentication {
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(try roots(clientAuthentication.trustRootsPath))
            configuration.sendCANameList = true
        }
        return try NIOSSLContext(configuration: configuration)
    }

    private static func clientContext(_ tls: UpstreamTLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let path = tls.trustRootsPath { configuration.trustRoots = .certificates(try roots(path)) }
        if tls.serverName == nil { configuration.certificateVerification = .noHostnameVerification }
        if let files = tls.clientCertificate {
            (configuration.certificateChain, configuration.privateKey) = try identity(files)
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// A certificate chain (at least one certificate) and its private key, from PEM files.
    private static func identity(_ files: CertificateFiles) throws -> ([NIOSSLCertificateSource], NIOSSLPrivateKeySource) {
        let chain = try NIOSSLCertificate.fromPEMFile(files.chainPath)
        guard !chain.isEmpty else { throw TLSMaterialError.noCertificate(files.chainPath) }
        return (chain.map { .certificate($0) }, .privateKey(try NIOSSLPrivateKey(file: files.privateKeyPath, format: .pem)))
    }

    private static func roots(_ path: String) throws -> [NIOSSLCertificate] {
        let roots = try NIOSSLCertificate.fromPEMFile(path)
        guard !roots.isEmpty else { throw TLSMaterialError.noCertificate(path) }
        return roots
    }
}

/// A listener's server contexts, chosen by the client's server name.
struct TerminationContexts: Sendable {
    let byName: [String: NIOSSLContext]
    let fallback: NIOSSLContext?
    let settings: TLSTermination

    /// The context for a server name: exact, then `*.` one label up, then the default.
    func context(for serverName: String?) -> NIOSSLContext? {
        guard let name = serverName?.lowercased() else { return fallback }
        if let exact = byName[name] { return exact }
        if let dot = name.firstIndex(of: "."), let wildcard = byName["*" + name[dot...]] { return wildcard }
        return fallback
    }
}

/// A certificate file that parsed but held no certificate.
enum TLSMaterialError: Error, CustomStringConvertible {
    case noCertificate(String)

    var description: String {
        switch self {
        case .noCertificate(let path): "\(path) holds no PEM certificate"
        }
    }
}
