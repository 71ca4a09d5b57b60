import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// The machinery shared by every typed map: layout checks when the view is
/// created, and element operations that copy Swift values to and from the
/// kernel's byte layout.
///
/// A Swift type matches a map's key or value when its size or its stride
/// equals the map's size (C's `sizeof` includes trailing padding, which Swift
/// counts only in the stride). Trailing padding is zeroed on the way in, so
/// hash keys compare equal in the kernel. Interior padding must be explicit
/// in the Swift type (a field), as generated types do.
@usableFromInline
struct MapAccess<Key: BitwiseCopyable, Value: BitwiseCopyable>: @unchecked Sendable {
    @usableFromInline let map: BPFMap
    @usableFromInline let fd: Int32
    @usableFromInline let keySize: Int
    /// Bytes of one value as the kernel stores it (per CPU: rounded up to 8).
    @usableFromInline let valueStride: Int
    /// Values per element: the number of possible CPUs for per-CPU maps, else 1.
    @usableFromInline let valuesPerElement: Int
    /// Whether the key is an index (arrays): E2BIG then means out of range, not full.
    @usableFromInline let indexed: Bool

    @usableFromInline
    init(_ map: BPFMap, view: String, types: [MapType], checksValue: Bool = true) throws(BPFError) {
        let type = map.type
        guard types.contains(type) else {
            throw BPFError(
                .invalidArgument, operation: "open typed map", subject: map.description,
                detail: "\(view) needs a map of type \(types.map(\.description).joined(separator: " or ")); this one is \(type)")
        }
        self.map = map
        self.keySize = map.keySize
        let valueSize = map.valueSize
        let btfTypes = map.btfTypes
        try MapAccess.checkLayout(Key.self, role: "key", size: keySize, map: map, btfType: btfTypes.map { ($0.btf, $0.key) })
        if checksValue {
            try MapAccess.checkLayout(Value.self, role: "value", size: valueSize, map: map, btfType: btfTypes.map { ($0.btf, $0.value) })
        }
        if type.isPerCPU {
            let cpus = libbpf_num_possible_cpus()
            guard cpus > 0 else { throw BPFError.system("count possible CPUs", nil, errno: Errno(rawValue: -cpus)) }
            valuesPerElement = Int(cpus)
            valueStride = (valueSize + 7) & ~7
        } else {
            valuesPerElement = 1
            valueStride = valueSize
        }
        indexed = type == .array || type == .perCPUArray || type == .sockMap
        fd = try map.descriptor()
    }

    /// Checks a Swift type against a map's key or value size and, when the
    /// object has BTF, against the BTF type, naming both sizes on mismatch.
    static func checkLayout<T>(_ type: T.Type, role: String, size: Int, map: BPFMap, btfType: (OpaquePointer, UInt32)?) throws(BPFError) {
        let swiftSize = MemoryLayout<T>.size
        let swiftStride = MemoryLayout<T>.stride
        var expected = "\(size)-byte \(role)s"
        if let (btf, id) = btfType, id != 0 {
            let btfSize = btf__resolve_size(btf, id)
            let typeName = BTFQuery.typeName(btf, id)
            expected = "\(size)-byte \(role)s (BTF type '\(typeName)', \(btfSize) bytes)"
            if btfSize >= 0, Int(btfSize) != size {
                throw BPFError(.sizeMismatch, operation: "open typed map", subject: map.description,
                               detail: "the map's definition says \(size)-byte \(role)s but its BTF type '\(typeName)' is \(btfSize) bytes")
            }
        }
        guard swiftSize == size || swiftStride == size else {
            throw BPFError(
                .sizeMismatch, operation: "open typed map", subject: map.description,
                hint: "make the Swift \(role) type match the C definition byte for byte, or generate it with bpf2swift",
                detail: "\(map.description) has \(expected); Swift type \(T.self) is \(swiftSize) bytes (stride \(swiftStride))")
        }
        if let (btf, id) = btfType, id != 0 {
            try checkMirror(T.self, role: role, btf: btf, id: id, map: map)
        }
    }

    // MARK: Marshalling

    @inlinable @inline(__always)
    func withKey<R>(_ key: Key, _ body: (UnsafeRawPointer) -> R) -> R {
        if MemoryLayout<Key>.size == keySize {
            return withUnsafeBytes(of: key) { body($0.baseAddress!) }
        }
        return withUnsafeTemporaryAllocation(byteCount: keySize, alignment: 16) { buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            withUnsafeBytes(of: key) { buffer.copyMemory(from: $0) }
            return body(UnsafeRawPointer(buffer.baseAddress!))
        }
    }

    /// Copies `values` (one per CPU for per-CPU maps) into the kernel layout.
    @inlinable @inline(__always)
    func withValues<R>(_ values: some Collection<Value>, _ body: (UnsafeRawPointer) -> R) -> R {
        if valuesPerElement == 1, MemoryLayout<Value>.size == valueStride, let value = values.first {
            return withUnsafeBytes(of: value) { body($0.baseAddress!) }
        }
        return withUnsafeTemporaryAllocation(byteCount: valueStride * valuesPerElement, alignment: 16) { buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            for (index, value) in values.prefix(valuesPerElement).enumerated() {
                withUnsafeBytes(of: value) {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[(index * valueStride)...]).copyMemory(from: $0)
                }
            }
            return body(UnsafeRawPointer(buffer.baseAddress!))
        }
    }

    /// Reads one element's values out of the kernel layout.
    @inlinable @inline(__always)
    func decodeValues(_ bytes: UnsafeRawPointer) -> [Value] {
        (0..<valuesPerElement).map { bytes.loadUnaligned(fromByteOffset: $0 * valueStride, as: Value.self) }
    }

    // MARK: Element operations

    /// Looks a key up; nil when it is absent. For per-CPU maps: CPU 0's value.
    @inlinable
    func lookup(_ key: Key) throws(BPFError) -> Value? {
        let result: Result<Value?, Errno> = withKey(key) { keyPointer in
            withUnsafeTemporaryAllocation(byteCount: max(valueStride * valuesPerElement, MemoryLayout<Value>.size), alignment: 16) { buffer in
                if bpf_map_lookup_elem(fd, keyPointer, buffer.baseAddress) == 0 {
                    return .success(buffer.loadUnaligned(as: Value.self))
                }
                return Glibc.errno == ENOENT ? .success(nil) : .failure(.current)
            }
        }
        return try result.get(orThrow: "lookup", map)
    }

    /// Looks a key up in a per-CPU map; one value per possible CPU.
    @inlinable
    func lookupPerCPU(_ key: Key) throws(BPFError) -> [Value]? {
        let result: Result<[Value]?, Errno> = withKey(key) { keyPointer in
            withUnsafeTemporaryAllocation(byteCount: valueStride * valuesPerElement, alignment: 16) { buffer in
                if bpf_map_lookup_elem(fd, keyPointer, buffer.baseAddress) == 0 {
                    return .success(decodeValues(UnsafeRawPointer(buffer.baseAddress!)))
                }
                return Glibc.errno == ENOENT ? .success(nil) : .failure(.current)
            }
        }
        return try result.get(orThrow: "lookup", map)
    }

    /// Inserts or replaces an element; `values` holds one value, or one per CPU.
    @inlinable
    func update(_ key: Key, _ values: some Collection<Value>, mode: UpdateMode) throws(BPFError) {
        let status = withKey(key) { keyPointer in
            withValues(values) { valuePointer in
                bpf_map_update_elem(fd, keyPointer, valuePointer, mode.flags) == 0 ? 0 : Glibc.errno
            }
        }
        if status != 0 { throw updateError(Errno(rawValue: status), key: key) }
    }

    /// Inserts a socket (its descriptor as the value) into a sockmap or sockhash.
    @inlinable
    func updateSocket(_ key: Key, socket: Int32, mode: UpdateMode) throws(BPFError) {
        let status = withKey(key) { keyPointer in
            withUnsafeBytes(of: UInt64(UInt32(bitPattern: socket))) { value in
                bpf_map_update_elem(fd, keyPointer, value.baseAddress, mode.flags) == 0 ? 0 : Glibc.errno
            }
        }
        if status != 0 { throw updateError(Errno(rawValue: status), key: key) }
    }

    @usableFromInline
    func updateError(_ errno: Errno, key: Key) -> BPFError {
        switch errno {
        case .argumentListTooLong where indexed:
            return BPFError(.invalidArgument, operation: "update", subject: map.description, errno: errno,
                            detail: "index \(key) is out of range 0..<\(map.maxEntries)")
        case .argumentListTooLong, .noSpace:  // LPM tries report a full map as ENOSPC
            return BPFError(.mapFull, operation: "update", subject: map.description, errno: errno,
                            hint: "the map holds \(map.maxEntries) entries; raise max entries before load or remove entries",
                            detail: "no room for key \(key)")
        case .fileExists:
            return BPFError(.keyExists, operation: "update", subject: map.description, errno: errno, detail: "key \(key) is already present")
        case .noSuchFileOrDirectory:
            return BPFError(.keyNotFound, operation: "update", subject: map.description, errno: errno, detail: "key \(key) is not present")
        default:
            return BPFError.system("update", map.description, errno: errno)
        }
    }

    /// Deletes a key; false when it was not there.
    @inlinable
    func delete(_ key: Key) throws(BPFError) -> Bool {
        let status = withKey(key) { bpf_map_delete_elem(fd, $0) == 0 ? 0 : Glibc.errno }
        if status == 0 { return true }
        if status == ENOENT { return false }
        throw BPFError.system("delete", map.description, errno: Errno(rawValue: status))
    }

    /// All keys, walked with `BPF_MAP_GET_NEXT_KEY`.
    ///
    /// A key deleted by someone else during the walk makes the kernel restart
    /// from the first key; the walk is bounded by the map's capacity.
    @inlinable
    func keys() throws(BPFError) -> [Key] {
        var keys: [Key] = []
        let limit = map.maxEntries
        let result: Errno? = withUnsafeTemporaryAllocation(byteCount: keySize * 2, alignment: 16) { buffer in
            let current = buffer.baseAddress!
            let next = buffer.baseAddress! + keySize
            var previous: UnsafeRawPointer? = nil
            while keys.count < limit {
                if bpf_map_get_next_key(fd, previous, next) != 0 {
                    return Glibc.errno == ENOENT ? nil : Errno.current
                }
                keys.append(next.loadUnaligned(as: Key.self))
                current.copyMemory(from: next, byteCount: keySize)
                previous = UnsafeRawPointer(current)
            }
            return nil
        }
        if let result { throw BPFError.system("iterate keys", map.description, errno: result) }
        return keys
    }

    // MARK: Batch operations

    /// Reads (and optionally deletes) every element with the batch syscalls,
    /// `chunk` elements per call.
    @inlinable
    func lookupBatch(chunk: Int, delete: Bool) throws(BPFError) -> (keys: [Key], values: [Value]) {
        var chunk = max(1, min(chunk, map.maxEntries))
        let elementBytes = valueStride * valuesPerElement
        var keys: [Key] = []
        var rawValues: [UInt8] = []
        var keyBuffer = [UInt8](repeating: 0, count: keySize * chunk)
        var valueBuffer = [UInt8](repeating: 0, count: elementBytes * chunk)
        var token = [UInt8](repeating: 0, count: max(keySize, 8))
        var first = true
        while true {
            var count = UInt32(chunk)
            let status = keyBuffer.withUnsafeMutableBytes { keyBytes in
                valueBuffer.withUnsafeMutableBytes { valueBytes in
                    token.withUnsafeMutableBytes { tokenBytes in
                        let call = delete ? cbpf_map_lookup_and_delete_batch : cbpf_map_lookup_batch
                        return call(fd, first ? nil : tokenBytes.baseAddress, tokenBytes.baseAddress,
                                    keyBytes.baseAddress, valueBytes.baseAddress, &count, 0) == 0 ? 0 : Glibc.errno
                    }
                }
            }
            if status == ENOSPC && count == 0 {
                // One hash bucket holds more entries than a chunk: grow and retry (nothing was read or deleted).
                chunk *= 2
                keyBuffer = [UInt8](repeating: 0, count: keySize * chunk)
                valueBuffer = [UInt8](repeating: 0, count: elementBytes * chunk)
                continue
            }
            if status != 0 && status != ENOENT {
                throw BPFError.system(delete ? "lookup and delete batch" : "lookup batch", map.description, errno: Errno(rawValue: status))
            }
            keyBuffer.withUnsafeBytes { bytes in
                for index in 0..<Int(count) { keys.append(bytes.loadUnaligned(fromByteOffset: index * keySize, as: Key.self)) }
            }
            rawValues.append(contentsOf: valueBuffer[0..<(Int(count) * elementBytes)])
            if status == ENOENT { break }
            first = false
        }
        let values = rawValues.withUnsafeBytes { bytes in
            (0..<(keys.count * valuesPerElement)).map { bytes.loadUnaligned(fromByteOffset: $0 * valueStride, as: Value.self) }
        }
        return (keys, values)
    }

    /// Writes many elements in one syscall (`BPF_MAP_UPDATE_BATCH`).
    @inlinable
    func updateBatch(_ keys: [Key], values: [Value], mode: UpdateMode) throws(BPFError) -> Int {
        precondition(keys.count * valuesPerElement == values.count, "one value per key (per CPU for per-CPU maps)")
        var keyBytes = [UInt8](repeating: 0, count: keySize * keys.count)
        var valueBytes = [UInt8](repeating: 0, count: valueStride * values.count)
        keyBytes.withUnsafeMutableBytes { buffer in
            for (index, key) in keys.enumerated() {
                withUnsafeBytes(of: key) { UnsafeMutableRawBufferPointer(rebasing: buffer[(index * keySize)...]).copyMemory(from: $0) }
            }
        }
        valueBytes.withUnsafeMutableBytes { buffer in
            for (index, value) in values.enumerated() {
                withUnsafeBytes(of: value) { UnsafeMutableRawBufferPointer(rebasing: buffer[(index * valueStride)...]).copyMemory(from: $0) }
            }
        }
        var count = UInt32(keys.count)
        let status = cbpf_map_update_batch(fd, keyBytes, valueBytes, &count, mode.flags) == 0 ? 0 : Glibc.errno
        if status != 0 {
            let error = updateError(Errno(rawValue: status), key: keys[min(Int(count), keys.count - 1)])
            throw BPFError(error.code, operation: "update batch", subject: map.description, errno: error.errno, hint: error.hint,
                           detail: "\(count) of \(keys.count) elements were written before: \(error.detail ?? "")")
        }
        return Int(count)
    }

    /// Deletes many keys in one syscall (`BPF_MAP_DELETE_BATCH`); a missing key stops the batch.
    @inlinable
    func deleteBatch(_ keys: [Key]) throws(BPFError) -> Int {
        var keyBytes = [UInt8](repeating: 0, count: keySize * keys.count)
        keyBytes.withUnsafeMutableBytes { buffer in
            for (index, key) in keys.enumerated() {
                withUnsafeBytes(of: key) { UnsafeMutableRawBufferPointer(rebasing: buffer[(index * keySize)...]).copyMemory(from: $0) }
            }
        }
        var count = UInt32(keys.count)
        let status = cbpf_map_delete_batch(fd, keyBytes, &count, 0) == 0 ? 0 : Glibc.errno
        if status == ENOENT {
            throw BPFError(.keyNotFound, operation: "delete batch", subject: map.description, errno: .noSuchFileOrDirectory,
                           detail: "\(count) of \(keys.count) keys were deleted; key \(keys[Int(count)]) is not present")
        }
        if status != 0 { throw BPFError.system("delete batch", map.description, errno: Errno(rawValue: status)) }
        return Int(count)
    }
}

extension Result where Failure == Errno {
    /// The success value, or a ``BPFError`` naming the operation and the map.
    @inlinable
    func get(orThrow operation: BPFError.Operation, _ map: BPFMap) throws(BPFError) -> Success {
        switch self {
        case .success(let value): return value
        case .failure(let errno): throw BPFError.system(operation, map.description, errno: errno)
        }
    }
}
