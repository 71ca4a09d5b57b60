/// A typed view of a socket hash (`BPF_MAP_TYPE_SOCKHASH`): sockets stored
/// under keys of your choosing, the targets of `bpf_msg_redirect_hash` and
/// `bpf_sk_redirect_hash`.
///
/// Sockets are inserted by descriptor; a lookup answers with the socket's
/// cookie (`SO_COOKIE`) when the map has 8-byte values.
public struct SockHash<Key: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<Key, UInt64>

    /// Opens a typed view of a loaded sockhash.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "SockHash", types: [.sockHash], checksValue: false)
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// Adds an established TCP socket (or a UDP/unix socket) under `key`.
    @inlinable
    public func insert(socket: Int32, for key: Key, mode: UpdateMode = .any) throws(BPFError) {
        try access.updateSocket(key, socket: socket, mode: mode)
    }

    /// The cookie of the socket stored under `key`, or nil when absent.
    @inlinable
    public func cookie(for key: Key) throws(BPFError) -> UInt64? {
        try requireCookies(access)
        return try access.lookup(key)
    }

    /// Removes `key`; false when it was not present.
    @inlinable
    @discardableResult
    public func remove(_ key: Key) throws(BPFError) -> Bool { try access.delete(key) }

    /// A snapshot of the keys.
    @inlinable
    public func keys() throws(BPFError) -> [Key] { try access.keys() }
}

/// A typed view of a socket array (`BPF_MAP_TYPE_SOCKMAP`), indexed from 0.
public struct SockMap: Sendable {
    @usableFromInline let access: MapAccess<UInt32, UInt64>

    /// Opens a typed view of a loaded sockmap.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "SockMap", types: [.sockMap], checksValue: false)
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// Stores a socket at `index`.
    @inlinable
    public func insert(socket: Int32, at index: UInt32, mode: UpdateMode = .any) throws(BPFError) {
        try access.updateSocket(index, socket: socket, mode: mode)
    }

    /// The cookie of the socket at `index`, or nil when the slot is empty.
    @inlinable
    public func cookie(at index: UInt32) throws(BPFError) -> UInt64? {
        try requireCookies(access)
        return try access.lookup(index)
    }

    /// Empties the slot at `index`; false when it was empty.
    @inlinable
    @discardableResult
    public func remove(at index: UInt32) throws(BPFError) -> Bool { try access.delete(index) }
}

/// The kernel reports socket cookies only from sock maps with 8-byte values.
@usableFromInline
func requireCookies<Key>(_ access: MapAccess<Key, UInt64>) throws(BPFError) {
    guard access.map.valueSize == 8 else {
        throw BPFError(.invalidArgument, operation: "lookup", subject: access.map.description,
                       hint: "declare the map with 8-byte (__u64) values to read socket cookies",
                       detail: "the map has \(access.map.valueSize)-byte values")
    }
}
