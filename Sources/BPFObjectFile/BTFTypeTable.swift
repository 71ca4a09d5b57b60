/// The types of an object's `.BTF` section, parsed and checked.
///
/// Parsing refuses what libbpf 1.1 would follow into a wild pointer: type ids
/// beyond the last type, string offsets beyond the string section, records
/// that run past their section. The same table drives `bpf2swift`.
public struct BTFTypeTable: Sendable {
    /// A BTF kind (`BTF_KIND_*`).
    public enum Kind: UInt32, Sendable {
        case void = 0, int, pointer, array, structure, union, enumeration, forward, typedef, volatile, const
        case restrict, function, functionPrototype, variable, dataSection, float, declarationTag, typeTag, enumeration64
    }

    /// A member of a struct or union.
    public struct Member: Sendable {
        /// The member's name; empty for an anonymous struct or union.
        public var name: String
        /// The member's type id.
        public var type: UInt32
        /// Its offset from the start of the aggregate, in bits.
        public var bitOffset: Int
        /// For a bitfield, its width in bits; 0 otherwise.
        public var bitfieldSize: Int
    }

    /// A variable placed in a data section (`.rodata`, `.data`, `.bss`, `.maps`).
    public struct SectionVariable: Sendable {
        /// The variable's type id (a `variable`).
        public var type: UInt32
        /// Its byte offset in the section.
        public var offset: Int
        /// Its size in bytes.
        public var size: Int
    }

    /// One type record.
    public struct TypeRecord: Sendable {
        /// The kind.
        public var kind: Kind
        /// The name, empty when anonymous.
        public var name: String
        /// Size in bytes (int, struct, union, enum, datasec, float) or the referenced type id.
        public var sizeOrType: UInt32
        /// The kind flag (bitfield offsets in members; signedness of enums).
        public var kindFlag: Bool
        /// For ints: the encoding byte (1 signed, 2 char, 4 bool) and width in bits.
        public var intEncoding: (flags: UInt8, bits: Int)
        /// For arrays: element type, index type, element count.
        public var array: (element: UInt32, index: UInt32, count: Int)
        /// Struct and union members.
        public var members: [Member]
        /// Enum constants.
        public var enumerators: [(name: String, value: Int64)]
        /// Data-section variables.
        public var variables: [SectionVariable]
    }

    /// The types; index 0 is `void`, so a type id indexes this array.
    public private(set) var types: [TypeRecord]
    /// The length of the string section.
    public let stringsLength: UInt32

    private static let magic: UInt16 = 0xEB9F

    /// Parses a `.BTF` section.
    public init(section: UnsafeRawBufferPointer) throws(ELFImage.Invalid) {
        let reader = Reader(bytes: section)
        guard section.count >= 24, try reader.u16(0) == BTFTypeTable.magic else { throw ELFImage.Invalid(reason: ".BTF has no valid header") }
        let headerLength = try reader.u32(4)
        let typeOffset = try reader.u32(8), typeLength = try reader.u32(12)
        let stringOffset = try reader.u32(16), stringLength = try reader.u32(20)
        guard headerLength >= 24 else { throw ELFImage.Invalid(reason: ".BTF header length \(headerLength) is too short") }
        let typeStart = UInt64(headerLength) + UInt64(typeOffset)
        let stringStart = UInt64(headerLength) + UInt64(stringOffset)
        guard typeStart + UInt64(typeLength) <= UInt64(section.count), stringStart + UInt64(stringLength) <= UInt64(section.count) else {
            throw ELFImage.Invalid(reason: ".BTF type or string section runs past the section")
        }
        guard stringLength > 0, section[Int(stringStart)] == 0, section[Int(stringStart + UInt64(stringLength)) - 1] == 0 else {
            throw ELFImage.Invalid(reason: ".BTF strings are not NUL-delimited")
        }
        stringsLength = stringLength
        func name(_ offset: UInt32, _ owner: Int) throws(ELFImage.Invalid) -> String {
            guard offset < stringLength else { throw ELFImage.Invalid(reason: ".BTF type \(owner) has a name outside the strings") }
            let start = Int(stringStart) + Int(offset)
            return String(decoding: UnsafeRawBufferPointer(rebasing: section[start...]).prefix { $0 != 0 }, as: UTF8.self)
        }

        var types = [TypeRecord(kind: .void, name: "", sizeOrType: 0, kindFlag: false, intEncoding: (0, 0), array: (0, 0, 0), members: [], enumerators: [], variables: [])]
        var position = Int(typeStart)
        let end = Int(typeStart) + Int(typeLength)
        while position < end {
            let id = types.count
            guard position + 12 <= end else { throw ELFImage.Invalid(reason: ".BTF type \(id) is truncated") }
            let info = try reader.u32(position + 4)
            guard let kind = Kind(rawValue: (info >> 24) & 0x1F), kind != .void else {
                throw ELFImage.Invalid(reason: ".BTF type \(id) has unknown kind \((info >> 24) & 0x1F)")
            }
            let vlen = Int(info & 0xFFFF)
            var record = TypeRecord(
                kind: kind, name: try name(try reader.u32(position), id), sizeOrType: try reader.u32(position + 8),
                kindFlag: info >> 31 == 1, intEncoding: (0, 0), array: (0, 0, 0), members: [], enumerators: [], variables: [])
            let body = position + 12
            let extra: Int
            switch kind {
            case .int:
                let encoding = try reader.u32(body)
                record.intEncoding = (UInt8((encoding >> 24) & 0x0F), Int(encoding & 0xFF))
                extra = 4
            case .variable, .declarationTag:
                extra = 4
            case .array:
                record.array = (try reader.u32(body), try reader.u32(body + 4), Int(try reader.u32(body + 8)))
                extra = 12
            case .structure, .union:
                for index in 0..<vlen {
                    let base = body + index * 12
                    let offset = try reader.u32(base + 8)
                    record.members.append(Member(
                        name: try name(try reader.u32(base), id), type: try reader.u32(base + 4),
                        bitOffset: Int(record.kindFlag ? offset & 0xFF_FFFF : offset),
                        bitfieldSize: Int(record.kindFlag ? offset >> 24 : 0)))
                }
                extra = vlen * 12
            case .enumeration:
                for index in 0..<vlen {
                    let raw = try reader.u32(body + index * 8 + 4)
                    let value = record.kindFlag ? Int64(Int32(bitPattern: raw)) : Int64(raw)
                    record.enumerators.append((try name(try reader.u32(body + index * 8), id), value))
                }
                extra = vlen * 8
            case .enumeration64:
                for index in 0..<vlen {
                    let low = UInt64(try reader.u32(body + index * 12 + 4)), high = UInt64(try reader.u32(body + index * 12 + 8))
                    record.enumerators.append((try name(try reader.u32(body + index * 12), id), Int64(bitPattern: high << 32 | low)))
                }
                extra = vlen * 12
            case .functionPrototype:
                for index in 0..<vlen {
                    _ = try name(try reader.u32(body + index * 8), id)
                    record.members.append(Member(name: "", type: try reader.u32(body + index * 8 + 4), bitOffset: 0, bitfieldSize: 0))
                }
                extra = vlen * 8
            case .dataSection:
                for index in 0..<vlen {
                    let base = body + index * 12
                    record.variables.append(SectionVariable(type: try reader.u32(base), offset: Int(try reader.u32(base + 4)), size: Int(try reader.u32(base + 8))))
                }
                extra = vlen * 12
            default:
                extra = 0
            }
            types.append(record)
            position = body + extra
        }
        guard position == end else { throw ELFImage.Invalid(reason: ".BTF type section has trailing bytes") }
        self.types = types

        // Every type id a record refers to must exist.
        let count = UInt32(types.count - 1)
        for (id, record) in types.enumerated() {
            var references: [UInt32] = []
            switch record.kind {
            case .pointer, .typedef, .volatile, .const, .restrict, .function, .functionPrototype, .variable, .declarationTag, .typeTag:
                references.append(record.sizeOrType)
            case .array:
                references += [record.array.element, record.array.index]
            default:
                break
            }
            references += record.members.map(\.type) + record.variables.map(\.type)
            if let bad = references.first(where: { $0 > count }) {
                throw ELFImage.Invalid(reason: ".BTF type \(id) refers to type \(bad); there are \(count)")
            }
        }
    }

    /// Checks a `.BTF.ext` section's function info, line info and CO-RE
    /// relocation records against this table.
    public func validateExt(_ section: UnsafeRawBufferPointer) throws(ELFImage.Invalid) {
        let reader = Reader(bytes: section)
        let typeCount = UInt32(types.count - 1)
        guard section.count >= 24, try reader.u16(0) == BTFTypeTable.magic else { throw ELFImage.Invalid(reason: ".BTF.ext has no valid header") }
        let headerLength = Int(try reader.u32(4))
        guard headerLength >= 24, headerLength <= section.count else { throw ELFImage.Invalid(reason: ".BTF.ext header length \(headerLength) is invalid") }
        // (offset field, minimum record size, type-id field, string fields)
        var infos: [(Int, Int, Int?, [Int])] = [(8, 8, 4, []), (16, 16, nil, [4, 8])]
        if headerLength >= 32 { infos.append((24, 16, 4, [8])) }
        for (field, minimumRecord, typeField, stringFields) in infos {
            let offset = Int(try reader.u32(field)), length = Int(try reader.u32(field + 4))
            if length == 0 { continue }
            let start = headerLength + offset
            let end = start + length
            guard end <= section.count, length >= 4 else { throw ELFImage.Invalid(reason: ".BTF.ext info runs past the section") }
            let recordSize = Int(try reader.u32(start))
            guard recordSize >= minimumRecord, recordSize % 4 == 0 else { throw ELFImage.Invalid(reason: ".BTF.ext record size \(recordSize) is invalid") }
            var position = start + 4
            while position < end {
                guard position + 8 <= end else { throw ELFImage.Invalid(reason: ".BTF.ext info block is truncated") }
                guard try reader.u32(position) < stringsLength else { throw ELFImage.Invalid(reason: ".BTF.ext names a section outside the strings") }
                let records = Int(try reader.u32(position + 4))
                position += 8
                guard records <= (end - position) / recordSize else { throw ELFImage.Invalid(reason: ".BTF.ext info block overruns its section") }
                for record in 0..<records {
                    let base = position + record * recordSize
                    if let typeField, try reader.u32(base + typeField) > typeCount {
                        throw ELFImage.Invalid(reason: ".BTF.ext refers to a missing type")
                    }
                    for stringField in stringFields where try reader.u32(base + stringField) >= stringsLength {
                        throw ELFImage.Invalid(reason: ".BTF.ext has a string outside the strings")
                    }
                }
                position += records * recordSize
            }
        }
    }

    // MARK: Queries

    /// The type behind typedefs, `const`, `volatile`, `restrict` and type tags.
    public func resolved(_ id: UInt32) -> UInt32 {
        var current = id
        for _ in 0..<64 {
            switch types[Int(current)].kind {
            case .typedef, .volatile, .const, .restrict, .typeTag: current = types[Int(current)].sizeOrType
            default: return current
            }
        }
        return current
    }

    /// The size in bytes of a type, as C's `sizeof` (0 for a cyclic or absurd type).
    public func size(of id: UInt32, depth: Int = 0) -> Int {
        guard depth < 32 else { return 0 }
        let type = types[Int(resolved(id))]
        switch type.kind {
        case .int, .structure, .union, .enumeration, .enumeration64, .float, .dataSection: return Int(type.sizeOrType)
        case .pointer: return 8
        case .array:
            let (total, overflow) = type.array.count.multipliedReportingOverflow(by: size(of: type.array.element, depth: depth + 1))
            return overflow || total > Int(UInt32.max) ? 0 : total
        default: return 0
        }
    }

    /// The alignment in bytes of a type, as C's `_Alignof` on BPF (at most 8).
    /// A packed struct or union — one whose size is not a multiple of its
    /// members' alignment, or with a member off its alignment — has alignment 1.
    public func alignment(of id: UInt32, depth: Int = 0) -> Int {
        guard depth < 32 else { return 1 }
        let type = types[Int(resolved(id))]
        switch type.kind {
        case .int, .enumeration, .enumeration64, .float: return min(8, max(1, Int(type.sizeOrType)))
        case .pointer: return 8
        case .array: return alignment(of: type.array.element, depth: depth + 1)
        case .structure, .union:
            let natural = type.members.map { alignment(of: $0.type, depth: depth + 1) }.max() ?? 1
            let misaligned = type.members.contains { member in
                member.bitfieldSize == 0 && (member.bitOffset % 8 != 0 || (member.bitOffset / 8) % alignment(of: member.type, depth: depth + 1) != 0)
            }
            return Int(type.sizeOrType) % natural != 0 || misaligned ? 1 : natural
        default: return 1
        }
    }

    /// Whether a struct or union is packed (see ``alignment(of:depth:)``).
    public func isPacked(_ id: UInt32) -> Bool {
        let type = types[Int(resolved(id))]
        guard type.kind == .structure || type.kind == .union else { return false }
        let natural = type.members.map { alignment(of: $0.type) }.max() ?? 1
        return alignment(of: id) == 1 && natural > 1
    }

    /// The first type of `kind` named `name`.
    public func find(_ name: String, kind: Kind) -> UInt32? {
        types.firstIndex { $0.kind == kind && $0.name == name }.map(UInt32.init)
    }

    /// Bounds-checked little-endian reads.
    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        func u32(_ offset: Int) throws(ELFImage.Invalid) -> UInt32 {
            guard offset >= 0, offset + 4 <= bytes.count else { throw ELFImage.Invalid(reason: "BTF read at \(offset) past the section") }
            return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }
        func u16(_ offset: Int) throws(ELFImage.Invalid) -> UInt16 {
            guard offset >= 0, offset + 2 <= bytes.count else { throw ELFImage.Invalid(reason: "BTF read at \(offset) past the section") }
            return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
        }
    }
}
