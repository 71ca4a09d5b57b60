/// A typed view of a per-CPU hash map (`BPF_MAP_TYPE_PERCPU_HASH`,
/// `BPF_MAP_TYPE_LRU_PERCPU_HASH`): each key holds one value per possible CPU.
public struct PerCPUHashMap<Key: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<Key, Value>

    /// Opens a typed view of a loaded per-CPU hash map.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "PerCPUHashMap", types: [.perCPUHash, .lruPerCPUHash])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The number of values per key: the possible CPUs.
    @inlinable
    public var cpuCount: Int { access.valuesPerElement }

    /// One value per possible CPU for `key`, or nil when the key is absent.
    @inlinable
    public func lookup(_ key: Key) throws(BPFError) -> [Value]? { try access.lookupPerCPU(key) }

    /// Stores one value per possible CPU (`values.count` must equal ``cpuCount``).
    @inlinable
    public func insert(_ values: [Value], for key: Key, mode: UpdateMode = .any) throws(BPFError) {
        guard values.count == cpuCount else {
            throw BPFError(.invalidArgument, operation: "update", subject: map.description, detail: "\(values.count) values given, the map needs one per CPU: \(cpuCount)")
        }
        try access.update(key, values, mode: mode)
    }

    /// Stores the same value on every CPU.
    @inlinable
    public func insert(_ value: Value, onEveryCPUFor key: Key, mode: UpdateMode = .any) throws(BPFError) {
        try access.update(key, repeatElement(value, count: cpuCount), mode: mode)
    }

    /// Removes `key`; returns false when it was not present.
    @inlinable
    @discardableResult
    public func remove(_ key: Key) throws(BPFError) -> Bool { try access.delete(key) }

    /// A snapshot of the keys.
    @inlinable
    public func keys() throws(BPFError) -> [Key] { try access.keys() }

    /// A snapshot of all entries (one value per CPU each), read with batch syscalls.
    @inlinable
    public func entries(chunk: Int = 256) throws(BPFError) -> [(key: Key, values: [Value])] {
        let batch = try access.lookupBatch(chunk: chunk, delete: false)
        let cpus = cpuCount
        return batch.keys.enumerated().map { index, key in (key, Array(batch.values[(index * cpus)..<((index + 1) * cpus)])) }
    }
}

/// A typed view of a per-CPU array (`BPF_MAP_TYPE_PERCPU_ARRAY`), the usual
/// home of counters a program bumps without atomics.
public struct PerCPUArrayMap<Value: BitwiseCopyable>: Sendable {
    @usableFromInline let access: MapAccess<UInt32, Value>

    /// Opens a typed view of a loaded per-CPU array.
    public init(_ map: BPFMap) throws(BPFError) {
        access = try MapAccess(map, view: "PerCPUArrayMap", types: [.perCPUArray])
    }

    /// The underlying map.
    @inlinable
    public var map: BPFMap { access.map }

    /// The number of values per slot: the possible CPUs.
    @inlinable
    public var cpuCount: Int { access.valuesPerElement }

    /// The values of every CPU at `index`.
    @inlinable
    public func values(at index: UInt32) throws(BPFError) -> [Value] {
        guard let values = try access.lookupPerCPU(index) else {
            throw BPFError(.invalidArgument, operation: "lookup", subject: map.description, detail: "index \(index) is out of range 0..<\(map.maxEntries)")
        }
        return values
    }

    /// Stores one value per CPU at `index`.
    @inlinable
    public func set(_ values: [Value], at index: UInt32) throws(BPFError) {
        guard values.count == cpuCount else {
            throw BPFError(.invalidArgument, operation: "update", subject: map.description, detail: "\(values.count) values given, the map needs one per CPU: \(cpuCount)")
        }
        try access.update(index, values, mode: .any)
    }
}

extension PerCPUArrayMap where Value: FixedWidthInteger {
    /// The sum over all CPUs of the counter at `index`, wrapping on overflow.
    @inlinable
    public func sum(at index: UInt32) throws(BPFError) -> Value {
        try values(at: index).reduce(0, &+)
    }
}
