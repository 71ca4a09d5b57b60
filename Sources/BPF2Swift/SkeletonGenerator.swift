import BPFObjectFile

/// Generates the Swift side of a BPF object: the embedded bytes, a typed
/// skeleton (programs, maps and global variables as properties), and Swift
/// mirrors of the C types they use, all from the object's BTF.
public enum SkeletonGenerator {
    /// What to generate.
    public struct Options: Sendable {
        /// The object's name: its source file name without `.bpf.c`.
        public var objectName: String
        /// The source file, for comments.
        public var sourceFileName: String
        /// The access level of everything generated (`public` or `internal`).
        public var access: String
        /// Whether the generated file must `import MeshKernel` (false inside MeshKernel itself).
        public var importsMeshKernel: Bool

        /// Creates options.
        public init(objectName: String, sourceFileName: String, access: String = "internal", importsMeshKernel: Bool = true) {
            self.objectName = objectName
            self.sourceFileName = sourceFileName
            self.access = access
            self.importsMeshKernel = importsMeshKernel
        }
    }

    /// BPF map type numbers (`BPF_MAP_TYPE_*`) that have typed views.
    private enum MapKind: Int {
        case hash = 1, array = 2, perCPUHash = 5, perCPUArray = 6, lruHash = 9, lruPerCPUHash = 10
        case lpmTrie = 11, sockMap = 15, sockHash = 18, ringBuffer = 27
    }

    private struct MapDefinition {
        var name: String
        var kind: Int
        var key: UInt32?
        var value: UInt32?
    }

    /// Generates the Swift source for an object file's bytes.
    public static func generate(object bytes: [UInt8], options: Options) throws(GeneratorError) -> String {
        let parsed: Result<([ELFImage.Symbol], BTFTypeTable), GeneratorError> = bytes.withUnsafeBytes { image in
            do throws(ELFImage.Invalid) {
                let sections = try ELFImage.validate(image)
                guard let btfSection = sections.first(where: { $0.name == ".BTF" }) else {
                    return .failure(GeneratorError("\(options.sourceFileName) has no BTF; compile it with -g"))
                }
                let btf = try BTFTypeTable(section: UnsafeRawBufferPointer(rebasing: image[btfSection.range]))
                return .success((ELFImage.symbols(image, sections: sections), btf))
            } catch {
                return .failure(GeneratorError("\(options.sourceFileName): \(error.reason)"))
            }
        }
        let (symbols, btf) = try parsed.get()
        let programs = ELFImage.programs(in: symbols)
        let access = options.access
        let mapper = TypeMapper(btf: btf, access: access)
        let typeName = Naming.upperCamel(options.objectName) + "Object"
        let embeddedName = Naming.lowerCamel(options.objectName)

        // Maps, from the BTF of the `.maps` section.
        var maps: [MapDefinition] = []
        if let section = btf.find(".maps", kind: .dataSection) {
            for variable in btf.types[Int(section)].variables {
                let record = btf.types[Int(variable.type)]
                let definition = btf.types[Int(btf.resolved(record.sizeOrType))]
                var map = MapDefinition(name: record.name, kind: 0)
                for member in definition.members {
                    let pointer = btf.types[Int(btf.resolved(member.type))]
                    guard pointer.kind == .pointer else { continue }
                    switch member.name {
                    case "type": map.kind = btf.types[Int(pointer.sizeOrType)].array.count
                    case "key": map.key = pointer.sizeOrType
                    case "value": map.value = pointer.sizeOrType
                    default: break
                    }
                }
                maps.append(map)
            }
        }

        // Global variables, from `.rodata`, `.data` and `.bss` (and their `.name` variants).
        var globals: [(section: String, cName: String, swiftName: String, type: String, offset: Int)] = []
        for record in btf.types where record.kind == .dataSection {
            let isData = [".rodata", ".data", ".bss"].contains { record.name == $0 || record.name.hasPrefix($0 + ".") }
            guard isData else { continue }
            for variable in record.variables {
                let name = btf.types[Int(variable.type)].name
                // Compiler-made statics such as bpf_printk's `one.____fmt` are not variables to expose.
                guard !name.isEmpty, name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else { continue }
                let type = try mapper.swiftType(btf.types[Int(variable.type)].sizeOrType, suggestedName: Naming.upperCamel(name),
                                                context: "global variable '\(name)'")
                // In the object file the BTF offsets of variables are relocations still to be
                // applied (libbpf fixes them up at open); the symbol table has the real offset.
                let offset = symbols.first { $0.isObject && $0.name == name && $0.section == record.name }?.value ?? variable.offset
                globals.append((record.name, name, Naming.identifier(name), type, offset))
            }
        }

        // Types exported with BPF2SWIFT_EXPORT (variables in the `.bpf2swift` section).
        if let exports = btf.find(".bpf2swift", kind: .dataSection) {
            for variable in btf.types[Int(exports)].variables {
                let record = btf.types[Int(variable.type)]
                _ = try mapper.swiftType(record.sizeOrType, suggestedName: Naming.upperCamel(record.name), context: "exported type of '\(record.name)'")
            }
        }

        // Typed views of the maps.
        var mapViews: [(swiftName: String, cName: String, type: String, initializer: String)] = []
        for map in maps {
            let swiftName = Naming.identifier(map.name)
            let context = "map '\(map.name)'"
            func mapped(_ id: UInt32?, _ role: String) throws(GeneratorError) -> String? {
                guard let id else { return nil }
                return try mapper.swiftType(id, suggestedName: Naming.upperCamel(map.name) + role, context: "\(role.lowercased()) of \(context)")
            }
            let key = try mapped(map.key, "Key")
            let value = try mapped(map.value, "Value")
            let open = "object.map(\"\(map.name)\")"
            var view = ("BPFMap", "try \(open)")
            switch MapKind(rawValue: map.kind) {
            case .hash?, .lruHash?:
                if let key, let value { view = ("HashMap<\(key), \(value)>", "try HashMap(\(open))") }
            case .array?:
                if key == "UInt32", let value { view = ("ArrayMap<\(value)>", "try ArrayMap(\(open))") }
            case .perCPUHash?, .lruPerCPUHash?:
                if let key, let value { view = ("PerCPUHashMap<\(key), \(value)>", "try PerCPUHashMap(\(open))") }
            case .perCPUArray?:
                if key == "UInt32", let value { view = ("PerCPUArrayMap<\(value)>", "try PerCPUArrayMap(\(open))") }
            case .lpmTrie?:
                let keyRecord = map.key.map { btf.types[Int(btf.resolved($0))] }
                if let keyRecord, keyRecord.members.count == 2, keyRecord.members[1].bitOffset == 32, let value {
                    let address = try mapper.swiftType(keyRecord.members[1].type, suggestedName: Naming.upperCamel(map.name) + "Address", context: "address of \(context)")
                    view = ("LPMTrieMap<\(address), \(value)>", "try LPMTrieMap(\(open))")
                } else if let key, let value {
                    view = ("LPMTrie<\(key), \(value)>", "try LPMTrie(\(open))")
                }
            case .sockHash?:
                if let key { view = ("SockHash<\(key)>", "try SockHash(\(open))") }
            case .sockMap?:
                view = ("SockMap", "try SockMap(\(open))")
            case .ringBuffer?:
                view = ("RingBuffer", "try RingBuffer(\(open))")
            case nil:
                break
            }
            mapViews.append((swiftName, map.name, view.0, view.1))
        }

        // Emit.
        var out: [String] = []
        out.append("// Generated by bpf2swift from \(options.sourceFileName). Do not edit.")
        if options.importsMeshKernel { out.append("import MeshKernel") }
        out.append("")
        out.append("extension EmbeddedBPFObject {")
        out.append("    /// The compiled `\(options.sourceFileName)` (\(bytes.count) bytes).")
        out.append("    \(access) static let \(embeddedName) = EmbeddedBPFObject(name: \"\(options.objectName)\", base64: \"\(Base64.encode(bytes))\")")
        out.append("}")
        out.append("")
        out.append("/// Typed access to `\(options.sourceFileName)`: its programs, maps and global variables, and Swift mirrors")
        out.append("/// of the C types they use. Open it, adjust ``maps`` and ``globals``, then ``load()``.")
        out.append("\(access) struct \(typeName): Sendable {")
        out.append("    /// The opened object.")
        out.append("    \(access) let object: BPFObject")
        out.append("    /// The programs.")
        out.append("    \(access) let programs: Programs")
        out.append("    /// The map definitions, adjustable until ``load()``.")
        out.append("    \(access) let maps: MapDefinitions")
        out.append("    /// The global variables: constants are set before ``load()``, other variables at any time.")
        out.append("    \(access) let globals: Globals")
        out.append("")
        out.append("    /// Binds to an opened `\(options.objectName)` object.")
        out.append("    \(access) init(_ object: BPFObject) throws(BPFError) {")
        out.append("        self.object = object")
        out.append("        programs = try Programs(object)")
        out.append("        maps = try MapDefinitions(object)")
        out.append("        globals = try Globals(object)")
        out.append("    }")
        out.append("")
        out.append("    /// Opens the embedded object.")
        out.append("    \(access) static func open() throws(BPFError) -> \(typeName) {")
        out.append("        try \(typeName)(BPFObject.open(.\(embeddedName)))")
        out.append("    }")
        out.append("")
        out.append("    /// Loads the object into the kernel and opens its typed maps.")
        out.append("    \(access) func load() throws(BPFError) -> Loaded {")
        out.append("        try object.load()")
        out.append("        return try Loaded(self)")
        out.append("    }")
        out.append("")
        out += bindingStruct("Programs", doc: "The programs of `\(options.sourceFileName)`.", access: access, indent: "    ",
                             members: programs.map { ("`\($0.name)` in section `\($0.section)`.", Naming.identifier($0.name), "BPFProgram", "try object.program(\"\($0.name)\")") })
        out.append("")
        out += bindingStruct("MapDefinitions", doc: "The map definitions of `\(options.sourceFileName)`.", access: access, indent: "    ",
                             members: mapViews.map { ("`\($0.cName)`.", $0.swiftName, "BPFMap", "try object.map(\"\($0.cName)\")") })
        out.append("")
        out += bindingStruct("Globals", doc: "The global variables of `\(options.sourceFileName)`.", access: access, indent: "    ",
                             members: globals.map {
                                 ("`\($0.cName)` in `\($0.section)`.", $0.swiftName, "GlobalVariable<\($0.type)>",
                                  "try GlobalVariable(\"\($0.cName)\", in: object, section: \"\($0.section)\", offset: \($0.offset))")
                             })
        out.append("")
        out.append("    /// The loaded object: programs, typed maps and global variables.")
        out.append("    \(access) struct Loaded: Sendable {")
        out.append("        /// The loaded object.")
        out.append("        \(access) let object: BPFObject")
        out.append("        /// The programs, ready to attach.")
        out.append("        \(access) let programs: Programs")
        out.append("        /// The maps, typed.")
        out.append("        \(access) let maps: Maps")
        out.append("        /// The global variables.")
        out.append("        \(access) let globals: Globals")
        out.append("        init(_ skeleton: \(typeName)) throws(BPFError) {")
        out.append("            object = skeleton.object")
        out.append("            programs = skeleton.programs")
        out.append("            globals = skeleton.globals")
        out.append("            maps = try Maps(skeleton.object)")
        out.append("        }")
        out.append("")
        out += bindingStruct("Maps", doc: "The typed maps of `\(options.sourceFileName)`.", access: access, indent: "        ",
                             members: mapViews.map { ("`\($0.cName)`.", $0.swiftName, $0.type, $0.initializer) })
        out.append("    }")
        for declaration in mapper.declarations {
            out.append("")
            out.append(declaration)
        }
        out.append("}")
        out.append("")
        return out.joined(separator: "\n")
    }
}

extension SkeletonGenerator {
    /// A struct whose `let` members are bound from a `BPFObject` in its initializer.
    static func bindingStruct(
        _ name: String, doc: String, access: String, indent: String,
        members: [(doc: String, name: String, type: String, initializer: String)]
    ) -> [String] {
        var lines = ["\(indent)/// \(doc)", "\(indent)\(access) struct \(name): Sendable {"]
        for member in members {
            lines.append("\(indent)    /// \(member.doc)")
            lines.append("\(indent)    \(access) let \(member.name): \(member.type)")
        }
        lines.append("\(indent)    init(_ object: BPFObject) throws(BPFError) {")
        lines += members.map { "\(indent)        self.\($0.name) = \($0.initializer)" }
        if members.isEmpty { lines.append("\(indent)        _ = object") }
        lines.append("\(indent)    }")
        lines.append("\(indent)}")
        return lines
    }
}

/// Standard base64 (RFC 4648) with padding.
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 2 < bytes.count {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int(chunk >> UInt32(shift) & 63)]) }
            index += 3
        }
        let remaining = bytes.count - index
        if remaining > 0 {
            let chunk = UInt32(bytes[index]) << 16 | (remaining == 2 ? UInt32(bytes[index + 1]) << 8 : 0)
            out.append(alphabet[Int(chunk >> 18 & 63)])
            out.append(alphabet[Int(chunk >> 12 & 63)])
            out.append(remaining == 2 ? alphabet[Int(chunk >> 6 & 63)] : UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }
}
