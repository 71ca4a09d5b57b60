import BPFObjectFile

/// Maps BTF types to Swift types, and emits a Swift declaration for every C
/// struct, union and enum that generated code uses.
final class TypeMapper {
    let btf: BTFTypeTable
    private(set) var declarations: [String] = []
    private var names: [UInt32: String] = [:]
    private var inProgress: Set<UInt32> = []
    let access: String

    init(btf: BTFTypeTable, access: String) {
        self.btf = btf
        self.access = access
    }

    private func record(_ id: UInt32) -> BTFTypeTable.TypeRecord { btf.types[Int(id)] }

    /// The Swift type for BTF type `id`, declaring generated types as needed.
    /// `suggestedName` names anonymous structs, unions and enums.
    func swiftType(_ id: UInt32, suggestedName: String, context: String) throws(GeneratorError) -> String {
        var current = id
        var typedefName: String?
        for _ in 0..<64 {
            let type = record(current)
            switch type.kind {
            case .typedef:
                if typedefName == nil { typedefName = type.name }
                current = type.sizeOrType
            case .const, .volatile, .restrict, .typeTag:
                current = type.sizeOrType
            default:
                return try mapResolved(current, name: typedefName.map(Naming.upperCamel) ?? suggestedName, context: context)
            }
        }
        throw GeneratorError("\(context) has a chain of more than 64 typedefs or qualifiers (a cycle?)")
    }

    private func mapResolved(_ id: UInt32, name: String, context: String) throws(GeneratorError) -> String {
        let type = record(id)
        switch type.kind {
        case .void:
            throw GeneratorError("\(context) has type void, which has no size")
        case .int:
            let bytes = Int(type.sizeOrType)
            // A C _Bool may hold any byte; Swift's Bool may not. Stored as UInt8
            // (struct members get a Bool accessor, see StructLayout).
            if type.intEncoding.flags & 4 != 0 { return "UInt8" }
            let signed = type.intEncoding.flags & 1 != 0
            switch bytes {
            case 1, 2, 4, 8: return (signed ? "Int" : "UInt") + "\(bytes * 8)"
            default: throw GeneratorError("\(context) is a \(bytes * 8)-bit integer; bpf2swift supports 8, 16, 32 and 64 bits — split it into two __u64")
            }
        case .float:
            return type.sizeOrType == 4 ? "Float" : "Double"
        case .pointer:
            return "UInt64"
        case .enumeration, .enumeration64:
            return try declareEnum(id, name: uniqueTypeName(type.name.isEmpty ? name : Naming.upperCamel(type.name), for: id))
        case .structure, .union:
            return try declareAggregate(id, name: uniqueTypeName(type.name.isEmpty ? name : Naming.upperCamel(type.name), for: id))
        case .array:
            guard type.array.count > 0 else {
                throw GeneratorError("\(context) is a flexible array member; give it a fixed size or leave it out of shared types")
            }
            guard type.array.count <= 1024 else {
                throw GeneratorError("\(context) is an array of \(type.array.count) elements; bpf2swift mirrors arrays of up to 1024 as tuples")
            }
            let element = try swiftType(type.array.element, suggestedName: name + "Element", context: context + "[]")
            return "(" + Array(repeating: element, count: type.array.count).joined(separator: ", ") + ")"
        default:
            throw GeneratorError("\(context) has BTF kind \(type.kind), which has no fixed-layout Swift equivalent")
        }
    }

    /// A Swift expression for the zero value of a mapped type.
    func zero(_ swiftType: String) -> String {
        switch swiftType {
        case "Bool": return "false"
        case "Float", "Double": return "0"
        case _ where swiftType.hasPrefix("("):
            let inner = String(swiftType.dropFirst().dropLast())
            let elements = splitTopLevel(inner)
            return "(" + elements.map(zero).joined(separator: ", ") + ")"
        case _ where swiftType.hasPrefix("Int") || swiftType.hasPrefix("UInt"): return "0"
        default: return ".init()"
        }
    }

    /// Splits a tuple's element list at top-level commas.
    private func splitTopLevel(_ text: String) -> [String] {
        var parts: [String] = []
        var depth = 0
        var current = ""
        for character in text {
            if character == "(" { depth += 1 }
            if character == ")" { depth -= 1 }
            if character == ",", depth == 0 {
                parts.append(current.trimmingSpaces())
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.trimmingSpaces().isEmpty { parts.append(current.trimmingSpaces()) }
        return parts
    }

    /// Names generated code or Swift already uses inside an object's namespace.
    static let reservedTypeNames: Set<String> = [
        "Programs", "MapDefinitions", "Globals", "Loaded", "Maps", "String", "Int", "UInt", "Bool", "Float", "Double",
        "Array", "Set", "Dictionary", "Optional", "Result", "Error", "Hasher", "Never", "Void", "Any", "Self", "Type",
        "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "MemoryLayout", "RawFields",
        "BTFMirror", "BPFMap", "BPFObject", "BPFProgram", "BPFError", "GlobalVariable", "HashMap", "ArrayMap",
        "PerCPUHashMap", "PerCPUArrayMap", "LPMTrieMap", "LPMTrie", "LPMKey", "SockHash", "SockMap", "RingBuffer",
        "EmbeddedBPFObject", "Sendable", "Hashable", "Equatable", "RawRepresentable", "BitwiseCopyable",
    ]
    private var usedTypeNames: [String: UInt32] = [:]

    /// A Swift type name not yet taken by another C type or reserved.
    private func uniqueTypeName(_ name: String, for id: UInt32) -> String {
        if let existing = names[id] { return existing }
        var candidate = TypeMapper.reservedTypeNames.contains(name) ? name + "Type" : name
        while let owner = usedTypeNames[candidate], owner != id { candidate += "_" }
        usedTypeNames[candidate] = id
        return candidate
    }

    private func declareEnum(_ id: UInt32, name: String) throws(GeneratorError) -> String {
        if let existing = names[id] { return existing }
        names[id] = name
        let type = record(id)
        let signed = type.kindFlag
        let raw = (signed ? "Int" : "UInt") + "\(max(1, Int(type.sizeOrType)) * 8)"
        let prefix = Naming.commonPrefix(type.enumerators.map(\.name))
        var lines = [
            "    /// Mirrors `enum \(type.name.isEmpty ? "(anonymous)" : type.name)`.",
            "    \(access) struct \(name): RawRepresentable, Hashable, Sendable, BitwiseCopyable {",
            "        /// The C value.",
            "        \(access) var rawValue: \(raw)",
            "        /// Wraps a C value (any value, named or not).",
            "        \(access) init(rawValue: \(raw)) { self.rawValue = rawValue }",
            "        /// The zero value.",
            "        \(access) init() { self.rawValue = 0 }",
        ]
        var used: Set<String> = []
        for (constant, value) in type.enumerators {
            var swiftName = Naming.identifier(String(constant.dropFirst(prefix.count)))
            while used.contains(swiftName) { swiftName += "_" }
            used.insert(swiftName)
            let literal = signed ? "\(value)" : "\(UInt64(bitPattern: value) & (raw == "UInt64" ? UInt64.max : (1 << (UInt64(type.sizeOrType) * 8)) - 1))"
            lines.append("        /// `\(constant)` = \(value)")
            lines.append("        \(access) static let \(swiftName) = \(name)(rawValue: \(literal))")
        }
        lines.append("    }")
        declarations.append(lines.joined(separator: "\n"))
        return name
    }

    private func declareAggregate(_ id: UInt32, name: String) throws(GeneratorError) -> String {
        if let existing = names[id] { return existing }
        guard !inProgress.contains(id) else { throw GeneratorError("struct '\(name)' contains itself") }
        inProgress.insert(id)
        defer { inProgress.remove(id) }
        let layout = try StructLayout(id: id, swiftName: name, mapper: self)
        names[id] = name
        declarations.append(layout.declaration(access: access, zero: zero))
        return name
    }
}

extension String {
    func trimmingSpaces() -> String {
        var text = Substring(self)
        while text.first == " " { text = text.dropFirst() }
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
