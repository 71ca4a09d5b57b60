/// The datapath's records of the connections ``ProxyRedirect`` sent to a
/// proxy — each one's original destination, and the identity and tenant of
/// the workload that made it — by the connection's addresses as the proxy's
/// accepted socket sees them.
///
/// ``ProxyRedirect/records`` reads the table of a redirect in this process.
/// A proxy in another process (the datapath's agent pins the table with
/// ``ProxyRedirect/pinRecords(in:)``) opens it from the pin with
/// ``init(pinnedIn:)``; it reads only, and needs `CAP_BPF` (or root) for the
/// pin. Its accepted sockets must be made in a cgroup registered with
/// ``ProxyRedirect/register(proxy:)``, where the datapath learns each
/// connection from its SYN.
public struct RedirectRecords: Sendable {
    /// The name of the table's pin in a ``PinFolder``.
    public static let pinName = "original_destinations"

    private let table: HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>

    init(table: HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>) {
        self.table = table
    }

    /// Opens the table pinned in `folder` (as ``pinName``). Fails if there is
    /// no such pin, or if the map pinned there is not a table of records (its
    /// type, key or value do not match: the error names which).
    public init(pinnedIn folder: PinFolder) throws(BPFError) {
        table = try HashMap(BPFMap.open(pinned: folder.path(for: Self.pinName)))
    }

    /// What the datapath recorded of a redirected connection, identified by
    /// the client's endpoint and the proxy listener's endpoint; nil when it
    /// was not redirected (or has closed).
    public func connection(client: Endpoint, proxy: Endpoint) throws(BPFError) -> RedirectedConnection? {
        let key = ProxyRedirectObject.ProxiedConnection(
            clientAddress: client.address.networkOrderWords, proxyAddress: proxy.address.networkOrderWords,
            clientPort: client.port, proxyPort: proxy.port)
        return try table.lookup(key).map {
            RedirectedConnection(
                originalDestination: Endpoint(IPAddress(networkOrderWords: $0.original.address), port: UInt16(bigEndian: $0.original.port)),
                sourceIdentity: $0.sourceIdentity, sourceTenant: $0.sourceTenant)
        }
    }
}
