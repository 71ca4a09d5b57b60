import Synchronization

/// The datapath's records of the connections ``ProxyRedirect`` sent to a
/// proxy — each one's original destination, and the identity and tenant of
/// the workload that made it — by the connection's addresses as the proxy's
/// accepted socket sees them.
///
/// ``ProxyRedirect/records`` reads the table of a redirect in this process.
/// A proxy in another process (the datapath's agent pins the table with
/// ``ProxyRedirect/pinRecords(in:)``) opens it from the pin with
/// ``init(pinnedAt:)``; it only reads, and needs `CAP_BPF` (or root) for the
/// pin. When the agent restarts it pins a new table: a lookup that finds
/// nothing then looks at the pin again (at most once every
/// ``refreshInterval``) and goes on with the new table. The proxy's accepted
/// sockets must be made in a cgroup registered with
/// ``ProxyRedirect/register(proxy:)``, where the datapath learns each
/// connection from its SYN.
public final class RedirectRecords: Sendable {
    /// The name of the table's pin in a ``PinFolder``.
    public static let pinName = "original_destinations"
    /// How often, at most, a lookup that finds nothing looks whether the pin now holds another table.
    public static let refreshInterval: Duration = .seconds(1)

    private typealias Table = HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>

    /// The table read now, and when the pin was last looked at.
    private struct Current {
        var table: Table
        var looked: ContinuousClock.Instant
    }

    private let current: Mutex<Current>
    /// Where the table is pinned; nil for a redirect's own table.
    private let pinPath: String?

    init(table: HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>) {
        current = Mutex(Current(table: table, looked: .now))
        pinPath = nil
    }

    /// Opens the table pinned at `path` (a folder's ``PinFolder/path(for:)``
    /// of ``pinName``). Fails if there is no such pin, or if the map pinned
    /// there is not a table of records (its type, key or value do not match:
    /// the error names which).
    public init(pinnedAt path: String) throws(BPFError) {
        current = Mutex(Current(table: try Table(BPFMap.open(pinned: path)), looked: .now))
        pinPath = path
    }

    /// Opens the table pinned in `folder` (as ``pinName``), as ``init(pinnedAt:)`` does.
    public convenience init(pinnedIn folder: PinFolder) throws(BPFError) {
        try self.init(pinnedAt: folder.path(for: Self.pinName))
    }

    /// What the datapath recorded of a redirected connection, identified by
    /// the client's endpoint and the proxy listener's endpoint; nil when it
    /// was not redirected (or has closed).
    public func connection(client: Endpoint, proxy: Endpoint) throws(BPFError) -> RedirectedConnection? {
        let key = ProxyRedirectObject.ProxiedConnection(
            clientAddress: client.address.networkOrderWords, proxyAddress: proxy.address.networkOrderWords,
            clientPort: client.port, proxyPort: proxy.port)
        let table = current.withLock { $0.table }
        if let found = try table.lookup(key) { return Self.connection(found) }
        guard let replaced = tableReplacedAtPin() else { return nil }
        return try replaced.lookup(key).map(Self.connection)
    }

    private static func connection(_ record: ProxyRedirectObject.RedirectRecord) -> RedirectedConnection {
        RedirectedConnection(
            originalDestination: Endpoint(IPAddress(networkOrderWords: record.original.address), port: UInt16(bigEndian: record.original.port)),
            sourceIdentity: record.sourceIdentity, sourceTenant: record.sourceTenant)
    }

    /// The table the pin holds now, if it is another than the one read (it
    /// then replaces it) and the pin was last looked at ``refreshInterval``
    /// ago or more; nil otherwise (a pin that cannot be opened now leaves the
    /// table read as it is).
    private func tableReplacedAtPin() -> Table? {
        guard let pinPath else { return nil }
        let now = ContinuousClock.now
        let due = current.withLock { current in
            guard now - current.looked >= Self.refreshInterval else { return false }
            current.looked = now
            return true
        }
        guard due, let map = try? BPFMap.open(pinned: pinPath), let pinned = try? Table(map) else { return nil }
        return current.withLock { current in
            guard pinned.map.id != current.table.map.id else { return nil }
            current.table = pinned
            return pinned
        }
    }
}
