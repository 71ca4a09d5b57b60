import Glibc
import Synchronization

/// The datapath's records of the connections ``ProxyRedirect`` sent to a
/// proxy — each one's original destination, and the identity and tenant of
/// the workload that made it — by the connection's addresses as the proxy's
/// accepted socket sees them.
///
/// ``ProxyRedirect/records`` reads the table of a redirect in this process.
/// A proxy in another process (the datapath's agent pins the table with
/// ``ProxyRedirect/pinRecords(in:replacing:)``) opens it from the pin with
/// ``init(pinnedIn:)``, in the agent's folder as it exists
/// (``PinFolder/init(existingAt:)``); it only reads, and needs `CAP_BPF`
/// (or root) for the pin. When the agent restarts it pins a new table in
/// place of the old one: a lookup that finds nothing looks whether the pin
/// was made anew (one `stat`) and then goes on with the new table. The proxy's accepted
/// sockets must be made in a cgroup registered with
/// ``ProxyRedirect/register(proxy:)``, where the datapath learns each
/// connection from its SYN.
public final class RedirectRecords: Sendable {
    /// The name of the table's pin in a ``PinFolder``.
    public static let pinName = "original_destinations"

    private typealias Table = HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>

    /// The table read now, and the inode of the pin it was opened from (nil for a redirect's own table).
    private struct Current {
        var table: Table
        var pin: ino_t?
    }

    private let current: Mutex<Current>
    /// Where the table is pinned; nil for a redirect's own table.
    private let pinPath: String?

    init(table: HashMap<ProxyRedirectObject.ProxiedConnection, ProxyRedirectObject.RedirectRecord>) {
        current = Mutex(Current(table: table, pin: nil))
        pinPath = nil
    }

    /// Opens the table pinned at `path` (a folder's ``PinFolder/path(for:)``
    /// of ``pinName``). Fails if there is no such pin, or if the map pinned
    /// there is not a table of records (its type, key or value do not match:
    /// the error names which).
    public init(pinnedAt path: String) throws(BPFError) {
        // (The pin's inode before the table: a pin made anew in between is found at the next miss.)
        let pin = Self.inode(of: path)
        current = Mutex(Current(table: try Table(BPFMap.open(pinned: path)), pin: pin))
        pinPath = path
    }

    /// Opens the table pinned in `folder` (as ``pinName``), as ``init(pinnedAt:)`` does.
    public convenience init(pinnedIn folder: PinFolder) throws(BPFError) {
        try self.init(pinnedAt: folder.path(for: Self.pinName))
    }

    /// What the datapath recorded of a redirected connection, identified by
    /// the client's endpoint and the proxy listener's endpoint; nil when it
    /// was not redirected (or has closed). Throws when the table cannot be
    /// read, or a table pinned anew cannot be opened.
    public func connection(client: Endpoint, proxy: Endpoint) throws(BPFError) -> RedirectedConnection? {
        let key = ProxyRedirectObject.ProxiedConnection(
            clientAddress: client.address.networkOrderWords, proxyAddress: proxy.address.networkOrderWords,
            clientPort: client.port, proxyPort: proxy.port)
        let table = current.withLock { $0.table }
        if let found = try table.lookup(key) { return Self.connection(found) }
        guard let replaced = try tableReplacedAtPin() else { return nil }
        return try replaced.lookup(key).map(Self.connection)
    }

    private static func connection(_ record: ProxyRedirectObject.RedirectRecord) -> RedirectedConnection {
        RedirectedConnection(
            originalDestination: Endpoint(IPAddress(networkOrderWords: record.original.address), port: UInt16(bigEndian: record.original.port)),
            sourceIdentity: record.sourceIdentity, sourceTenant: record.sourceTenant)
    }

    /// The table pinned now, if the pin was made anew since the table read
    /// was opened (it then replaces it); nil otherwise, or when there is no
    /// pin to open now (an agent between its unpin and its pin: the table
    /// read stays, and the next miss looks again). A new pin that cannot be
    /// opened as a table of records is tried once: its error is thrown, and
    /// the next misses go on with the table read until the pin is made anew again.
    private func tableReplacedAtPin() throws(BPFError) -> Table? {
        guard let pinPath, let pin = Self.inode(of: pinPath), current.withLock({ $0.pin != pin }) else { return nil }
        do throws(BPFError) {
            let pinned = try Table(BPFMap.open(pinned: pinPath))
            current.withLock { $0 = Current(table: pinned, pin: pin) }
            return pinned
        } catch {
            current.withLock { $0.pin = pin }
            throw error
        }
    }

    /// The inode of the file at `path`, nil if there is none.
    private static func inode(of path: String) -> ino_t? {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_ino : nil
    }
}
