/// Helpers for generated types: fixed arrays stored as tuples, and members
/// (unions, bitfields, packed fields) stored as raw little-endian bytes.
public enum RawFields {
    /// The elements of a fixed array stored as a homogeneous tuple.
    @inlinable
    public static func elements<Storage: BitwiseCopyable, Element: BitwiseCopyable>(of storage: Storage, as element: Element.Type) -> [Element] {
        withUnsafeBytes(of: storage) { bytes in
            (0..<(bytes.count / MemoryLayout<Element>.stride)).map { bytes.loadUnaligned(fromByteOffset: $0 * MemoryLayout<Element>.stride, as: Element.self) }
        }
    }

    /// Stores `elements` into a fixed array; extra elements are ignored and
    /// missing ones are zero.
    @inlinable
    public static func assign<Storage: BitwiseCopyable, Element: BitwiseCopyable>(_ elements: [Element], to storage: inout Storage) {
        withUnsafeMutableBytes(of: &storage) { bytes in
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            let count = min(elements.count, bytes.count / MemoryLayout<Element>.stride)
            for index in 0..<count {
                bytes.storeBytes(of: elements[index], toByteOffset: index * MemoryLayout<Element>.stride, as: Element.self)
            }
        }
    }

    /// Reads a value at `offset` bytes into raw storage.
    @inlinable
    public static func load<Storage: BitwiseCopyable, Value: BitwiseCopyable>(_ type: Value.Type, from storage: Storage, at offset: Int) -> Value {
        withUnsafeBytes(of: storage) { $0.loadUnaligned(fromByteOffset: offset, as: Value.self) }
    }

    /// Writes a value at `offset` bytes into raw storage.
    @inlinable
    public static func store<Storage: BitwiseCopyable, Value: BitwiseCopyable>(_ value: Value, into storage: inout Storage, at offset: Int) {
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: value, toByteOffset: offset, as: Value.self) }
    }

    /// Reads a bitfield of `width` bits starting `bitOffset` bits into raw storage (little-endian, as BPF lays them out).
    @inlinable
    public static func bits<Storage: BitwiseCopyable>(of storage: Storage, bitOffset: Int, width: Int, signed: Bool) -> Int64 {
        withUnsafeBytes(of: storage) { bytes in
            var value: UInt64 = 0
            for bit in 0..<width {
                let position = bitOffset + bit
                if bytes[position / 8] >> UInt8(position % 8) & 1 == 1 { value |= 1 << UInt64(bit) }
            }
            if signed, width < 64, value >> UInt64(width - 1) & 1 == 1 { value |= ~0 << UInt64(width) }
            return Int64(bitPattern: value)
        }
    }

    /// Writes the low `width` bits of `value` as a bitfield into raw storage.
    @inlinable
    public static func setBits<Storage: BitwiseCopyable>(_ value: Int64, into storage: inout Storage, bitOffset: Int, width: Int) {
        withUnsafeMutableBytes(of: &storage) { bytes in
            let pattern = UInt64(bitPattern: value)
            for bit in 0..<width {
                let position = bitOffset + bit
                let mask = UInt8(1) << UInt8(position % 8)
                if pattern >> UInt64(bit) & 1 == 1 { bytes[position / 8] |= mask } else { bytes[position / 8] &= ~mask }
            }
        }
    }

    /// Byte-wise equality, for generated types whose padding is explicit and zeroed.
    @inlinable
    public static func equal<Value: BitwiseCopyable>(_ lhs: Value, _ rhs: Value) -> Bool {
        withUnsafeBytes(of: lhs) { left in withUnsafeBytes(of: rhs) { right in left.elementsEqual(right) } }
    }

    /// Byte-wise hashing, the companion of ``equal(_:_:)``.
    @inlinable
    public static func hash<Value: BitwiseCopyable>(_ value: Value, into hasher: inout Hasher) {
        withUnsafeBytes(of: value) { hasher.combine(bytes: $0) }
    }
}
