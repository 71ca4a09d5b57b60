/// The key of an LPM trie: a prefix length in bits followed by the address
/// bytes, as `struct bpf_lpm_trie_key` lays it out.
///
/// `Address` must have an alignment of at most 4 so that it starts at byte 4,
/// as in C: use `UInt32` (IPv4, network byte order) or a tuple of `UInt8`s.
public struct LPMKey<Address: BitwiseCopyable>: BitwiseCopyable {
    /// The number of leading address bits that count.
    public var prefixLength: UInt32
    /// The address, in network byte order.
    public var address: Address

    /// Creates a key.
    public init(prefixLength: UInt32, address: Address) {
        self.prefixLength = prefixLength
        self.address = address
    }
}

/// A typed view of a longest-prefix-match trie (`BPF_MAP_TYPE_LPM_TRIE`),
/// for CIDR rules.
public struct LPMTrieMap<Address: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<LPMKey<Address>, Value>

    /// Opens a typed view of a loaded LPM trie.
    public init(_ map: BPFMap) throws(BPFError) {
        guard MemoryLayout<LPMKey<Address>>.offset(of: \LPMKey<Address>.address) == 4 else {
            throw BPFError(.sizeMismatch, operation: "open typed map", subject: map.description,
                           detail: "address type \(Address.self) has alignment \(MemoryLayout<Address>.alignment); an LPM key's address starts at byte 4, so use UInt32 or a tuple of UInt8")
        }
        access = try MapAccess(map, view: "LPMTrieMap", types: [.lpmTrie])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The number of address bits.
    @inlinable
    public var addressBits: UInt32 { UInt32(MemoryLayout<Address>.size * 8) }

    /// The value of the longest stored prefix that contains `address`.
    @inlinable
    public func longestMatch(_ address: Address) throws(BPFError) -> Value? {
        try access.lookup(LPMKey(prefixLength: addressBits, address: address))
    }

    /// Stores `value` for exactly this prefix; longer prefixes containing an
    /// address win over it in ``longestMatch(_:)``.
    @inlinable
    public func insert(_ value: Value, for prefix: LPMKey<Address>, mode: UpdateMode = .any) throws(BPFError) {
        guard prefix.prefixLength <= addressBits else {
            throw BPFError(.invalidArgument, operation: "update", subject: map.description, detail: "prefix length \(prefix.prefixLength) exceeds \(addressBits) address bits")
        }
        try access.update(prefix, CollectionOfOne(value), mode: mode)
    }

    /// Removes exactly this prefix; false when it was not present.
    @inlinable
    @discardableResult
    public func remove(_ prefix: LPMKey<Address>) throws(BPFError) -> Bool { try access.delete(prefix) }

    /// A snapshot of the stored prefixes.
    @inlinable
    public func prefixes() throws(BPFError) -> [LPMKey<Address>] { try access.keys() }
}

/// A typed view of an LPM trie whose whole key is one C struct that begins
/// with the 32-bit prefix length (`struct { __u32 prefixlen; ... }`), such as
/// a tenant followed by an address. The kernel answers every lookup with the
/// longest stored prefix of the key's bits after the prefix length.
public struct LPMTrie<Key: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<Key, Value>

    /// Opens a typed view of a loaded LPM trie.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "LPMTrie", types: [.lpmTrie])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The value of the longest stored prefix matching `key` (whose prefix
    /// length should be the full key width).
    @inlinable
    public func longestMatch(_ key: Key) throws(BPFError) -> Value? { try access.lookup(key) }

    /// Stores `value` for exactly this prefix.
    @inlinable
    public func insert(_ value: Value, for key: Key, mode: UpdateMode = .any) throws(BPFError) {
        try access.update(key, CollectionOfOne(value), mode: mode)
    }

    /// Removes exactly this prefix; false when it was not present.
    @discardableResult @inlinable
    public func remove(_ key: Key) throws(BPFError) -> Bool { try access.delete(key) }

    /// A snapshot of the stored prefixes.
    @inlinable
    public func keys() throws(BPFError) -> [Key] { try access.keys() }
}
