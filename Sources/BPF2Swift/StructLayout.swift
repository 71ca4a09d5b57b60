import BPFObjectFile

/// The Swift layout of one C struct or union, byte for byte.
///
/// Members at their natural alignment become stored properties, with
/// explicit padding between them; bitfields, unions and misaligned (packed)
/// members live in raw byte storage behind computed accessors. Every byte of
/// the C type is accounted for, so the Swift type has the C type's size and
/// its members the C offsets.
struct StructLayout {
    struct Field {
        var cName: String
        var swiftName: String
        var type: String
        var elementType: String?
    }

    struct Accessor {
        enum Access {
            case value(byteOffset: Int)
            case bits(bitOffset: Int, width: Int, signed: Bool, kind: ValueKind)
        }
        var cName: String
        var swiftName: String
        var type: String
        var access: Access
    }

    enum ValueKind { case integer, bool, enumeration }

    enum Item {
        case padding(name: String, bytes: Int)
        case field(Field)
        case raw(name: String, bytes: Int, accessors: [Accessor])
    }

    let swiftName: String
    let cName: String
    let size: Int
    private(set) var items: [Item] = []

    /// A member flattened out of anonymous structs; `group` marks members of an anonymous union.
    private struct FlatMember {
        var cName: String
        var type: UInt32
        var bitOffset: Int
        var bitfieldSize: Int
        var group: Range<Int>?
    }

    init(id: UInt32, swiftName: String, mapper: TypeMapper) throws(GeneratorError) {
        let btf = mapper.btf
        let type = btf.types[Int(id)]
        self.swiftName = swiftName
        self.cName = (type.kind == .union ? "union " : "struct ") + (type.name.isEmpty ? "(anonymous)" : type.name)
        self.size = Int(type.sizeOrType)
        guard size > 0 else { throw GeneratorError("\(cName) has no size") }

        var members: [FlatMember] = []
        func flatten(_ id: UInt32, base: Int, group: Range<Int>?) {
            let record = btf.types[Int(btf.resolved(id))]
            for member in record.members {
                let offset = base + member.bitOffset
                let memberType = btf.types[Int(btf.resolved(member.type))]
                if member.name.isEmpty && (memberType.kind == .structure || memberType.kind == .union) {
                    let inUnion = group ?? (memberType.kind == .union || record.kind == .union
                        ? (offset / 8)..<(offset / 8 + Int(memberType.sizeOrType)) : nil)
                    flatten(member.type, base: offset, group: inUnion)
                } else {
                    members.append(FlatMember(cName: member.name, type: member.type, bitOffset: offset, bitfieldSize: member.bitfieldSize,
                                              group: group ?? (record.kind == .union ? 0..<size : nil)))
                }
            }
        }
        flatten(id, base: 0, group: type.kind == .union ? 0..<size : nil)
        members.sort { $0.bitOffset < $1.bitOffset }

        // A packed type has no aligned Swift equivalent: all of it is raw bytes.
        let packed = btf.isPacked(id)
        var usedNames: Set<String> = ["btfTypeName", "btfMemberBitOffsets", "hash", "init", "self", "Self", "Type", "_", "await"]
        func uniqueName(_ cName: String) -> String {
            var name = Naming.identifier(cName)
            while usedNames.contains(name.filter { $0 != "`" }) || usedNames.contains(name) { name = name.filter { $0 != "`" } + "_" }
            usedNames.insert(name.filter { $0 != "`" })
            usedNames.insert(name.filter { $0 != "`" } + "Elements")
            return name
        }

        var cursor = 0
        var raw: (start: Int, end: Int, accessors: [Accessor])?
        var paddingCount = 0, rawCount = 0
        func pad(to offset: Int) {
            if offset > cursor {
                items.append(.padding(name: "_padding\(paddingCount)", bytes: offset - cursor))
                paddingCount += 1
                cursor = offset
            }
        }
        func closeRaw() {
            guard let open = raw else { return }
            items.append(.raw(name: "_raw\(rawCount)", bytes: open.end - open.start, accessors: open.accessors))
            rawCount += 1
            cursor = open.end
            raw = nil
        }

        for member in members {
            let context = "member '\(member.cName)' of \(cName)"
            let byteOffset = member.bitOffset / 8
            let memberSize = btf.size(of: member.type)
            let resolvedMember = btf.types[Int(btf.resolved(member.type))]
            let isBool = resolvedMember.kind == .int && resolvedMember.intEncoding.flags & 4 != 0
            var swiftType = try mapper.swiftType(member.type, suggestedName: swiftName + Naming.upperCamel(member.cName), context: context)
            if isBool { swiftType = "Bool" }
            let natural = !packed && !isBool && member.group == nil && member.bitfieldSize == 0 && member.bitOffset % 8 == 0
                && byteOffset >= max(cursor, raw?.end ?? 0) && byteOffset % btf.alignment(of: member.type) == 0
            let name = uniqueName(member.cName)
            if natural {
                closeRaw()
                pad(to: byteOffset)
                var elementType: String?
                let resolved = btf.types[Int(btf.resolved(member.type))]
                if resolved.kind == .array {
                    elementType = try mapper.swiftType(resolved.array.element, suggestedName: swiftName + Naming.upperCamel(member.cName) + "Element", context: context)
                }
                items.append(.field(Field(cName: member.cName, swiftName: name, type: swiftType, elementType: elementType)))
                cursor = byteOffset + memberSize
                continue
            }
            let extent: Range<Int>
            if member.bitfieldSize > 0 {
                extent = byteOffset..<((member.bitOffset + member.bitfieldSize + 7) / 8)
            } else {
                extent = byteOffset..<(byteOffset + memberSize)
            }
            let start = member.group.map { min($0.lowerBound, extent.lowerBound) } ?? extent.lowerBound
            let end = max(member.group?.upperBound ?? 0, extent.upperBound)
            if let open = raw, start <= open.end {
                raw = (open.start, max(open.end, end), open.accessors)
            } else {
                closeRaw()
                guard start >= cursor else {
                    throw GeneratorError("\(context) overlaps the member before it; bpf2swift cannot lay this out")
                }
                pad(to: start)
                raw = (start, end, [])
            }
            let relativeBits = member.bitOffset - raw!.start * 8
            let access: Accessor.Access
            if isBool && member.bitfieldSize == 0 {
                // Read as "not zero", so any byte the kernel wrote is a valid Bool.
                access = .bits(bitOffset: relativeBits, width: 8 * memberSize, signed: false, kind: .bool)
            } else if member.bitfieldSize > 0 {
                let resolved = btf.types[Int(btf.resolved(member.type))]
                let kind: ValueKind = swiftType == "Bool" ? .bool : (resolved.kind == .enumeration || resolved.kind == .enumeration64) ? .enumeration : .integer
                let signed = resolved.kind == .int ? resolved.intEncoding.flags & 1 != 0 : resolved.kindFlag
                access = .bits(bitOffset: relativeBits, width: member.bitfieldSize, signed: signed, kind: kind)
            } else {
                access = .value(byteOffset: relativeBits / 8)
            }
            raw!.accessors.append(Accessor(cName: member.cName, swiftName: name, type: swiftType, access: access))
        }
        closeRaw()
        guard cursor <= size else { throw GeneratorError("\(cName): members run past its size \(size)") }
        pad(to: size)
    }

    /// The Swift declaration, nested (indented by four spaces) in the object's namespace.
    func declaration(access: String, zero zeroExpression: (String) -> String) -> String {
        var stored: [String] = []
        var computed: [String] = []
        var parameters: [(name: String, type: String, optional: Bool)] = []
        var offsets: [String] = []
        for item in items {
            switch item {
            case .padding(let name, let bytes):
                stored.append("        private var \(name): \(byteTuple(bytes)) = \(zeroTuple(bytes))")
            case .field(let field):
                stored.append("        /// `\(field.cName)`")
                stored.append("        \(access) var \(field.swiftName): \(field.type) = \(zeroExpression(field.type))")
                parameters.append((field.swiftName, field.type, false))
                offsets.append("(\"\(field.cName)\", MemoryLayout<Self>.offset(of: \\Self.\(field.swiftName))! * 8)")
                if let element = field.elementType {
                    let plain = field.swiftName.filter { $0 != "`" }
                    computed.append("""
                            /// `\(field.cName)` as an array (assigning fills missing elements with zero).
                            \(access) var \(plain)Elements: [\(element)] {
                                get { RawFields.elements(of: \(field.swiftName), as: \(element).self) }
                                set { RawFields.assign(newValue, to: &\(field.swiftName)) }
                            }
                    """)
                }
            case .raw(let name, let bytes, let accessors):
                stored.append("        private var \(name): \(byteTuple(bytes)) = \(zeroTuple(bytes))")
                for accessor in accessors {
                    // Union members overlap: only the ones given are assigned.
                    if case .value = accessor.access {
                        parameters.append((accessor.swiftName, accessor.type, true))
                    } else {
                        parameters.append((accessor.swiftName, accessor.type, false))
                    }
                    let getter: String
                    let setter: String
                    switch accessor.access {
                    case .value(let byteOffset):
                        getter = "RawFields.load(\(accessor.type).self, from: \(name), at: \(byteOffset))"
                        setter = "RawFields.store(newValue, into: &\(name), at: \(byteOffset))"
                        offsets.append("(\"\(accessor.cName)\", MemoryLayout<Self>.offset(of: \\Self.\(name))! * 8 + \(byteOffset * 8))")
                    case .bits(let bitOffset, let width, let signed, let kind):
                        let bits = "RawFields.bits(of: \(name), bitOffset: \(bitOffset), width: \(width), signed: \(signed))"
                        let store = { (value: String) in "RawFields.setBits(\(value), into: &\(name), bitOffset: \(bitOffset), width: \(width))" }
                        switch kind {
                        case .bool:
                            getter = "\(bits) != 0"
                            setter = store("newValue ? 1 : 0")
                        case .enumeration:
                            getter = "\(accessor.type)(rawValue: .init(truncatingIfNeeded: \(bits)))"
                            setter = store("Int64(truncatingIfNeeded: newValue.rawValue)")
                        case .integer:
                            getter = "\(accessor.type)(truncatingIfNeeded: \(bits))"
                            setter = store("Int64(truncatingIfNeeded: newValue)")
                        }
                        offsets.append("(\"\(accessor.cName)\", MemoryLayout<Self>.offset(of: \\Self.\(name))! * 8 + \(bitOffset))")
                    }
                    computed.append("""
                            /// `\(accessor.cName)`\(accessor.access.isBitfield ? " (bitfield)" : "")
                            \(access) var \(accessor.swiftName): \(accessor.type) {
                                get { \(getter) }
                                set { \(setter) }
                            }
                    """)
                }
            }
        }
        var lines = ["    /// Mirrors `\(cName)` (\(size) bytes).", "    \(access) struct \(swiftName): BTFMirror, Hashable, Sendable {"]
        lines += stored
        let zeroes = parameters.map { $0.optional ? "\($0.name): \($0.type)? = nil" : "\($0.name): \($0.type) = \(zeroExpression($0.type))" }
        if parameters.isEmpty {
            lines.append("        /// A zero value.")
            lines.append("        \(access) init() {}")
        } else {
            lines.append("        /// Creates a value; omitted members are zero.")
            lines.append("        \(access) init(\(zeroes.joined(separator: ", "))) {")
            lines += parameters.map { $0.optional ? "            if let \($0.name) { self.\($0.name) = \($0.name) }" : "            self.\($0.name) = \($0.name)" }
            lines.append("        }")
        }
        lines += computed
        lines.append("        /// The C type this mirrors.")
        lines.append("        \(access) static let btfTypeName = \"\(cName)\"")
        lines.append("        /// The C members and their bit offsets in this Swift layout, checked against BTF when a map opens.")
        lines.append("        \(access) static var btfMemberBitOffsets: [(member: String, bitOffset: Int)] {")
        lines.append("            [" + offsets.joined(separator: ", ") + "]")
        lines.append("        }")
        lines.append("        /// Byte-wise equality (padding is explicit and zero).")
        lines.append("        \(access) static func == (lhs: Self, rhs: Self) -> Bool { RawFields.equal(lhs, rhs) }")
        lines.append("        /// Byte-wise hashing.")
        lines.append("        \(access) func hash(into hasher: inout Hasher) { RawFields.hash(self, into: &hasher) }")
        lines.append("    }")
        return lines.joined(separator: "\n")
    }

    private func byteTuple(_ count: Int) -> String {
        count == 1 ? "UInt8" : "(" + Array(repeating: "UInt8", count: count).joined(separator: ", ") + ")"
    }

    private func zeroTuple(_ count: Int) -> String {
        count == 1 ? "0" : "(" + Array(repeating: "0", count: count).joined(separator: ", ") + ")"
    }
}

extension StructLayout.Accessor.Access {
    var isBitfield: Bool {
        if case .bits = self { return true }
        return false
    }
}
