/// A certificate chain and its private key, as PEM files; read when the
/// configuration applies and again on ``MeshProxy/reloadCertificates()``.
public struct CertificateFiles: Sendable, Equatable {
    /// The certificate chain, leaf first.
    public var chainPath: String
    /// The leaf's private key.
    public var privateKeyPath: String

    /// Names the files.
    public init(chainPath: String, privateKeyPath: String) {
        self.chainPath = chainPath
        self.privateKeyPath = privateKeyPath
    }
}

/// TLS termination on a tenant's listener: the proxy holds the tenant's
/// certificates, chosen by the server name the client asks for (SNI).
public struct TLSTermination: Sendable, Equatable {
    /// Certificates by server name: exact names (`shop.example.com`) or one
    /// leading wildcard label (`*.example.com`); exact names win.
    public var certificates: [String: CertificateFiles]
    /// For a client that names no server or one not listed; nil refuses its handshake.
    public var defaultCertificate: CertificateFiles?
    /// Mutual TLS: nil asks clients for no certificate.
    public var clientAuthentication: ClientAuthentication?
    /// How long a client may take to complete its handshake.
    public var handshakeTimeout: Duration

    /// Creates the settings.
    public init(certificates: [String: CertificateFiles] = [:], defaultCertificate: CertificateFiles? = nil,
                clientAuthentication: ClientAuthentication? = nil, handshakeTimeout: Duration = .seconds(10)) {
        self.certificates = certificates
        self.defaultCertificate = defaultCertificate
        self.clientAuthentication = clientAuthentication
        self.handshakeTimeout = handshakeTimeout
    }
}

/// Mutual TLS on a tenant's listener: each client presents a workload
/// certificate signed by the tenant's roots, whose identity — a SPIFFE ID,
/// the certificate's URI subject alternative name, such as
/// `spiffe://mesh.local/ns/shop/sa/web` — must be allowed.
public struct ClientAuthentication: Sendable, Equatable {
    /// PEM file of the authorities that sign workload certificates.
    public var trustRootsPath: String
    /// The identities admitted; empty admits every identity the roots signed.
    public var allowedIdentities: Set<String>

    /// Creates the settings.
    public init(trustRootsPath: String, allowedIdentities: Set<String> = []) {
        self.trustRootsPath = trustRootsPath
        self.allowedIdentities = allowedIdentities
    }
}

/// TLS from the proxy to a cluster's endpoints (origination).
public struct UpstreamTLS: Sendable, Equatable {
    /// PEM file of the authorities the upstream's certificate must chain to; nil for the system's.
    public var trustRootsPath: String?
    /// The name sent as SNI and checked against the upstream's certificate;
    /// nil checks the chain only (no name).
    public var serverName: String?
    /// The proxy's own certificate, for upstreams that require mutual TLS.
    public var clientCertificate: CertificateFiles?

    /// Creates the settings.
    public init(trustRootsPath: String? = nil, serverName: String? = nil, clientCertificate: CertificateFiles? = nil) {
        self.trustRootsPath = trustRootsPath
        self.serverName = serverName
        self.clientCertificate = clientCertificate
    }
}
