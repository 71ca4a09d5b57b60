/// A typed view of a hash or LRU hash map (`BPF_MAP_TYPE_HASH`, `BPF_MAP_TYPE_LRU_HASH`).
///
/// Creating the view checks `Key` and `Value` against the map's key and value
/// sizes and, when the object has BTF, against its BTF types:
///
/// ```swift
/// let flows = try HashMap<FlowKey, FlowStats>(object.map("flows"))
/// try flows.insert(FlowStats(), for: key, mode: .noExist)
/// if let stats = try flows.lookup(key) { ... }
/// ```
public struct HashMap<Key: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<Key, Value>

    /// Opens a typed view of a loaded map.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "HashMap", types: [.hash, .lruHash])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The value for `key`, or nil when the key is absent.
    @inlinable
    public func lookup(_ key: Key) throws(BPFError) -> Value? { try access.lookup(key) }

    /// Stores `value` for `key`.
    ///
    /// Fails with ``BPFError/Code/mapFull`` when a new key does not fit,
    /// ``BPFError/Code/keyExists`` for `.noExist` and an existing key, and
    /// ``BPFError/Code/keyNotFound`` for `.exist` and an absent key.
    @inlinable
    public func insert(_ value: Value, for key: Key, mode: UpdateMode = .any) throws(BPFError) {
        try access.update(key, CollectionOfOne(value), mode: mode)
    }

    /// Removes `key`; returns false when it was not present.
    @discardableResult @inlinable
    public func remove(_ key: Key) throws(BPFError) -> Bool { try access.delete(key) }

    /// A snapshot of the keys, walked one by one.
    @inlinable
    public func keys() throws(BPFError) -> [Key] { try access.keys() }

    /// A snapshot of all entries, read with batch syscalls (`chunk` per call).
    @inlinable
    public func entries(chunk: Int = 256) throws(BPFError) -> [(key: Key, value: Value)] {
        let batch = try access.lookupBatch(chunk: chunk, delete: false)
        return zip(batch.keys, batch.values).map { ($0, $1) }
    }

    /// Reads and removes all entries with batch syscalls (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`).
    @inlinable
    public func drain(chunk: Int = 256) throws(BPFError) -> [(key: Key, value: Value)] {
        let batch = try access.lookupBatch(chunk: chunk, delete: true)
        return zip(batch.keys, batch.values).map { ($0, $1) }
    }

    /// Writes many entries in one syscall; returns how many were written.
    @inlinable
    @discardableResult
    public func insert(contentsOf entries: [(key: Key, value: Value)], mode: UpdateMode = .any) throws(BPFError) -> Int {
        try access.updateBatch(entries.map(\.key), values: entries.map(\.value), mode: mode)
    }

    /// Removes many keys in one syscall; returns how many were removed.
    @inlinable
    @discardableResult
    public func remove(contentsOf keys: [Key]) throws(BPFError) -> Int { try access.deleteBatch(keys) }
}

/// A typed view of an array map (`BPF_MAP_TYPE_ARRAY`): `maxEntries`
/// values indexed from 0, all present from creation, never removed.
public struct ArrayMap<Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<UInt32, Value>

    /// Opens a typed view of a loaded array map.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "ArrayMap", types: [.array])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The number of slots.
    @inlinable
    public var count: Int { access.map.maxEntries }

    /// The value at `index`; ``BPFError/Code/invalidArgument`` when out of range.
    @inlinable
    public func value(at index: UInt32) throws(BPFError) -> Value {
        guard let value = try access.lookup(index) else {
            throw BPFError(.invalidArgument, operation: "lookup", subject: map.description, detail: "index \(index) is out of range 0..<\(count)")
        }
        return value
    }

    /// Stores `value` at `index`.
    @inlinable
    public func set(_ value: Value, at index: UInt32) throws(BPFError) {
        try access.update(index, CollectionOfOne(value), mode: .any)
    }

    /// All values in index order, read with batch syscalls.
    @inlinable
    public func values(chunk: Int = 256) throws(BPFError) -> [Value] {
        try access.lookupBatch(chunk: chunk, delete: false).values
    }

    /// Writes values at the given indices in one syscall.
    @inlinable
    public func set(contentsOf entries: [(index: UInt32, value: Value)]) throws(BPFError) {
        _ = try access.updateBatch(entries.map(\.index), values: entries.map(\.value), mode: .any)
    }
}
