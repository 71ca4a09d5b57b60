import CBPFShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A BPF map: before its object is loaded, a definition you can inspect and
/// adjust; afterwards, a kernel map reached through typed views such as
/// ``HashMap`` and ``ArrayMap``.
///
/// A map comes from a ``BPFObject`` (``BPFObject/map(_:)``), from a pin
/// (``open(pinned:)``), or is created on its own (``create(_:name:keySize:valueSize:maxEntries:flags:)``).
public final class BPFMap: @unchecked Sendable, CustomStringConvertible {
    private enum Source {
        case object(BPFObject, OpaquePointer)
        case descriptor(Int32)
    }

    private let source: Source
    /// The memory mapping of a loaded global-variable map, made on first use.
    private let mapping = Mutex<MappedRegion?>(nil)

    /// A memory mapping owned by one map handle.
    private struct MappedRegion: @unchecked Sendable {
        var buffer: UnsafeMutableRawBufferPointer
    }
    /// The map's name (`max_entries` and the like are read live: they can change before load).
    public let name: String

    init(object: BPFObject, handle: OpaquePointer) {
        self.source = .object(object, handle)
        self.name = string(bpf_map__name(handle))
    }

    private init(descriptor: Int32, name: String) {
        self.source = .descriptor(descriptor)
        self.name = name
    }

    deinit {
        if case .descriptor(let fd) = source { closeDescriptor(fd) }
        if let mapped = mapping.withLock({ $0 }) { munmap(mapped.buffer.baseAddress, (mapped.buffer.count + 4095) & ~4095) }
    }

    /// Whether the map holds constants (`.rodata`, `.rodata.*`, or read-only
    /// for programs), which the kernel freezes at load.
    var holdsConstants: Bool {
        flags.contains(.readOnlyForPrograms) || name.hasSuffix(".rodata") || name.contains(".rodata.")
    }

    /// The loaded map's value memory-mapped into this process (`BPF_F_MMAPABLE`
    /// arrays, such as the `.data`, `.bss` and `.rodata` maps of an object).
    func liveMapping(_ operation: BPFError.Operation) throws(BPFError) -> UnsafeMutableRawBufferPointer {
        let fd = try descriptor()
        let writable = !holdsConstants
        let size = valueSize * maxEntries
        return try mapping.withLock { (mapped: inout MappedRegion?) throws(BPFError) -> UnsafeMutableRawBufferPointer in
            if let mapped { return mapped.buffer }
            let length = (size + 4095) & ~4095
            let address = mmap(nil, length, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0)
            guard let address, address != MAP_FAILED else {
                throw BPFError.system(operation, description, errno: .current, detail: "mmap of the map failed; it needs BPF_F_MMAPABLE")
            }
            let buffer = UnsafeMutableRawBufferPointer(start: address, count: size)
            mapped = MappedRegion(buffer: buffer)
            return buffer
        }
    }

    public var description: String { "map '\(name)'" }

    // MARK: Definition

    /// The map's type.
    public var type: MapType {
        switch source {
        case .object(_, let handle): MapType(bpf_map__type(handle))
        case .descriptor: MapType(rawValue: info.type)
        }
    }

    /// The key size in bytes, as the kernel sees it.
    public var keySize: Int {
        switch source {
        case .object(_, let handle): Int(bpf_map__key_size(handle))
        case .descriptor: Int(info.key_size)
        }
    }

    /// The value size in bytes (for per-CPU maps: of one CPU's value).
    public var valueSize: Int {
        switch source {
        case .object(_, let handle): Int(bpf_map__value_size(handle))
        case .descriptor: Int(info.value_size)
        }
    }

    /// The maximum number of entries.
    public var maxEntries: Int {
        switch source {
        case .object(_, let handle): Int(bpf_map__max_entries(handle))
        case .descriptor: Int(info.max_entries)
        }
    }

    /// The map's creation flags.
    public var flags: MapFlags {
        switch source {
        case .object(_, let handle): MapFlags(rawValue: bpf_map__map_flags(handle))
        case .descriptor: MapFlags(rawValue: info.map_flags)
        }
    }

    /// The file a ``BPFObject`` will pin this map at when loaded, if any.
    public var pinPath: String? {
        guard case .object(_, let handle) = source, let path = bpf_map__pin_path(handle) else { return nil }
        return String(cString: path)
    }

    /// Sets the maximum number of entries; only before the object is loaded.
    public func setMaxEntries(_ count: Int) throws(BPFError) {
        guard count > 0, count <= Int(UInt32.max) else {
            throw BPFError(.invalidArgument, operation: "set max entries", subject: description, detail: "\(count) is not in 1...\(UInt32.max)")
        }
        let (object, handle) = try definition("set max entries")
        try object.withUnloaded("set max entries", description) { () throws(BPFError) in
            try LibBPF.check("set max entries", description) { bpf_map__set_max_entries(handle, UInt32(count)) }
        }
    }

    /// Sets the path at which loading pins the map (or reuses a compatible pin).
    func setPinPath(_ path: String?) throws(BPFError) {
        let (object, handle) = try definition("set pin path")
        try object.withUnloaded("set pin path", description) { () throws(BPFError) in
            try LibBPF.check("set pin path", description) { bpf_map__set_pin_path(handle, path) }
        }
    }

    /// Makes the object use an existing kernel map (for example a pin) instead of creating one.
    func reuse(descriptor fd: Int32) throws(BPFError) {
        let (object, handle) = try definition("reuse map")
        try object.withUnloaded("reuse map", description) { () throws(BPFError) in
            try LibBPF.check("reuse map", description) { bpf_map__reuse_fd(handle, fd) }
        }
    }

    private func definition(_ operation: BPFError.Operation) throws(BPFError) -> (BPFObject, OpaquePointer) {
        guard case .object(let object, let handle) = source else {
            throw BPFError(.invalidState, operation: operation, subject: description, detail: "the map is not part of an object that is still to be loaded")
        }
        return (object, handle)
    }

    /// The libbpf map of an object, if this map comes from one.
    var objectHandle: OpaquePointer? {
        if case .object(_, let handle) = source { return handle }
        return nil
    }

    /// Whether the map's object is loaded (maps made on their own always are).
    var isObjectLoaded: Bool {
        if case .object(let object, _) = source { return object.isLoaded }
        return true
    }

    /// BTF type ids of key and value when the object carries BTF (0 otherwise), and the BTF.
    /// The object's own declaration of the map comes first: a map that reuses
    /// another object's (``reuse(descriptor:)``, a pin) takes that object's
    /// type ids, which mean nothing in this object's BTF.
    var btfTypes: (btf: OpaquePointer, key: UInt32, value: UInt32)? {
        guard case .object(let object, let handle) = source, let btf = bpf_object__btf(object.handle) else { return nil }
        let declared = BTFQuery.declaredTypes(btf, map: name)
        let key = declared.map(\.key).flatMap { $0 == 0 ? nil : $0 } ?? bpf_map__btf_key_type_id(handle)
        let value = declared.map(\.value).flatMap { $0 == 0 ? nil : $0 } ?? bpf_map__btf_value_type_id(handle)
        return (btf, key, value)
    }

    // MARK: Kernel map

    /// The map's file descriptor; the map must be loaded.
    public func descriptor() throws(BPFError) -> Int32 {
        switch source {
        case .descriptor(let fd):
            return fd
        case .object(let object, let handle):
            try object.requireLoaded("use map", description)
            let fd = bpf_map__fd(handle)
            guard fd >= 0 else {
                throw BPFError(.invalidState, operation: "use map", subject: description, detail: "the map was not created (autocreate off?)")
            }
            return fd
        }
    }

    /// The kernel's view of the map (`struct bpf_map_info`).
    var info: bpf_map_info {
        guard let fd = try? descriptor() else { return bpf_map_info() }
        return kernelInfo(of: fd, as: bpf_map_info.self, zero: bpf_map_info()) ?? bpf_map_info()
    }

    /// The map's kernel id, which `bpftool map show id N` accepts.
    public var id: UInt32 { info.id }

    /// Creates a map on its own, outside any object (`BPF_MAP_CREATE`).
    public static func create(
        _ type: MapType, name: String, keySize: Int, valueSize: Int, maxEntries: Int, flags: MapFlags = []
    ) throws(BPFError) -> BPFMap {
        for (field, value) in [("key size", keySize), ("value size", valueSize), ("max entries", maxEntries)] where value < 0 || value > Int(UInt32.max) {
            throw BPFError(.invalidArgument, operation: "create map", subject: "'\(name)'", detail: "\(field) \(value) is out of range")
        }
        let kernelName = String(decoding: name.utf8.prefix(15), as: UTF8.self)
        let fd = try LibBPF.check("create map", "'\(name)'") {
            cbpf_map_create(type.kernelValue, kernelName, UInt32(keySize), UInt32(valueSize), UInt32(maxEntries), flags.rawValue)
        }
        return BPFMap(descriptor: fd, name: name)
    }

    /// Opens a map pinned in bpffs.
    public static func open(pinned path: String) throws(BPFError) -> BPFMap {
        let (fd, info) = try openPinned(path, kind: "map", zero: bpf_map_info())
        let name = withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return BPFMap(descriptor: fd, name: name)
    }

    /// Pins the loaded map at `path` in bpffs.
    public func pin(at path: String) throws(BPFError) {
        let fd = try descriptor()
        try LibBPF.check("pin map", "\(description) at \(path)") { bpf_obj_pin(fd, path) }
    }
}
