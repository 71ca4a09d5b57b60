import CBPFShim

/// The kind of a BPF map (`enum bpf_map_type`).
public struct MapType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The kernel's `bpf_map_type` value.
    public let rawValue: UInt32
    /// Wraps a kernel `bpf_map_type` value.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ type: bpf_map_type) { self.rawValue = type.rawValue }
    var kernelValue: bpf_map_type { bpf_map_type(rawValue) }

    /// `BPF_MAP_TYPE_HASH`
    public static let hash = MapType(BPF_MAP_TYPE_HASH)
    /// `BPF_MAP_TYPE_ARRAY`
    public static let array = MapType(BPF_MAP_TYPE_ARRAY)
    /// `BPF_MAP_TYPE_PERCPU_HASH`
    public static let perCPUHash = MapType(BPF_MAP_TYPE_PERCPU_HASH)
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`
    public static let perCPUArray = MapType(BPF_MAP_TYPE_PERCPU_ARRAY)
    /// `BPF_MAP_TYPE_LRU_HASH`
    public static let lruHash = MapType(BPF_MAP_TYPE_LRU_HASH)
    /// `BPF_MAP_TYPE_LRU_PERCPU_HASH`
    public static let lruPerCPUHash = MapType(BPF_MAP_TYPE_LRU_PERCPU_HASH)
    /// `BPF_MAP_TYPE_LPM_TRIE`
    public static let lpmTrie = MapType(BPF_MAP_TYPE_LPM_TRIE)
    /// `BPF_MAP_TYPE_SOCKMAP`
    public static let sockMap = MapType(BPF_MAP_TYPE_SOCKMAP)
    /// `BPF_MAP_TYPE_SOCKHASH`
    public static let sockHash = MapType(BPF_MAP_TYPE_SOCKHASH)
    /// `BPF_MAP_TYPE_RINGBUF`
    public static let ringBuffer = MapType(BPF_MAP_TYPE_RINGBUF)
    /// `BPF_MAP_TYPE_PERF_EVENT_ARRAY`
    public static let perfEventArray = MapType(BPF_MAP_TYPE_PERF_EVENT_ARRAY)
    /// `BPF_MAP_TYPE_SK_STORAGE`
    public static let socketStorage = MapType(BPF_MAP_TYPE_SK_STORAGE)
    /// `BPF_MAP_TYPE_HASH_OF_MAPS`
    public static let hashOfMaps = MapType(BPF_MAP_TYPE_HASH_OF_MAPS)
    /// `BPF_MAP_TYPE_ARRAY_OF_MAPS`
    public static let arrayOfMaps = MapType(BPF_MAP_TYPE_ARRAY_OF_MAPS)

    /// The kernel's name for the type, such as `lru_hash`.
    public var description: String {
        libbpf_bpf_map_type_str(kernelValue).map { String(cString: $0) } ?? "map_type \(rawValue)"
    }

    /// Whether each value is stored once per possible CPU.
    public var isPerCPU: Bool {
        self == .perCPUHash || self == .perCPUArray || self == .lruPerCPUHash
            || self == MapType(BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE)
    }
}

/// Map creation flags (`BPF_F_*` in `map_flags`).
public struct MapFlags: OptionSet, Hashable, Sendable {
    /// The raw `map_flags` value.
    public let rawValue: UInt32
    /// Wraps raw `map_flags`.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `BPF_F_NO_PREALLOC`: allocate hash entries on demand (required for LPM tries).
    public static let noPreallocation = MapFlags(rawValue: UInt32(BPF_F_NO_PREALLOC))
    /// `BPF_F_RDONLY_PROG`: programs may only read the map.
    public static let readOnlyForPrograms = MapFlags(rawValue: UInt32(BPF_F_RDONLY_PROG))
    /// `BPF_F_MMAPABLE`: the array can be memory-mapped.
    public static let mmapable = MapFlags(rawValue: UInt32(BPF_F_MMAPABLE))
}

/// How an insert treats an existing key (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`).
@frozen
public enum UpdateMode: Sendable {
    /// Create the entry or replace it (`BPF_ANY`).
    case any
    /// Create the entry only if the key is absent (`BPF_NOEXIST`); otherwise ``BPFError/Code/keyExists``.
    case noExist
    /// Replace the entry only if the key is present (`BPF_EXIST`); otherwise ``BPFError/Code/keyNotFound``.
    case exist

    @inlinable
    var flags: UInt64 {
        switch self {
        case .any: UInt64(BPF_ANY)
        case .noExist: UInt64(BPF_NOEXIST)
        case .exist: UInt64(BPF_EXIST)
        }
    }
}
