import CBPFShim

/// A global variable of a BPF object (`.rodata`, `.data` or `.bss`), read
/// and written from Swift.
///
/// Constants (`const volatile` in `.rodata`) are set before the object is
/// loaded; after load the kernel freezes them and ``set(_:)`` fails with
/// ``BPFError/Code/invalidState``. `.data` and `.bss` variables can be read
/// and written at any time, before load (initial values) and after (the
/// live, memory-mapped values the programs see).
public struct GlobalVariable<Value: BitwiseCopyable>: Sendable {
    /// The C variable's name.
    public let name: String
    /// The section holding it.
    public let section: String
    private let map: BPFMap
    private let offset: Int

    /// Binds to variable `name` at `offset` in `section` of `object`,
    /// checking the offset and size against the object's BTF.
    public init(_ name: String, in object: BPFObject, section: String, offset: Int) throws(BPFError) {
        self.name = name
        self.section = section
        self.offset = offset
        map = try object.map(section)
        let declared = BTFQuery.sectionVariable(object, section: section, name: name)
        guard let declared, declared.offset == offset, declared.size == MemoryLayout<Value>.size else {
            throw BPFError(
                .sizeMismatch, operation: "bind global variable", subject: "'\(name)' in \(section) of object '\(object.name)'",
                hint: "regenerate the Swift types from the object (bpf2swift)",
                detail: declared.map { "the object places it at offset \($0.offset) with \($0.size) bytes; Swift expects offset \(offset) with \(MemoryLayout<Value>.size) bytes (\(Value.self))" }
                    ?? "the object has no such variable")
        }
    }

    /// The current value.
    public func get() throws(BPFError) -> Value {
        try map.withGlobalData("read global variable") { $0.loadUnaligned(fromByteOffset: offset, as: Value.self) }
    }

    /// Sets the value: before load for constants, at any time otherwise.
    public func set(_ value: Value) throws(BPFError) {
        if map.holdsConstants, map.isObjectLoaded {
            throw BPFError(.invalidState, operation: "set global variable", subject: "'\(name)' in \(section)",
                           hint: "constants are frozen at load; set them before calling load()")
        }
        try map.withGlobalData("set global variable") { $0.storeBytes(of: value, toByteOffset: offset, as: Value.self) }
    }
}

extension BPFMap {
    /// Runs `body` on the bytes of a global-variable map: libbpf's initial
    /// image before load; after load, the kernel map itself, memory-mapped
    /// (read-only for `.rodata`, which the kernel froze), so reads see the
    /// programs' latest writes and writes change only the variable written.
    func withGlobalData<R>(_ operation: BPFError.Operation, _ body: (UnsafeMutableRawBufferPointer) -> R) throws(BPFError) -> R {
        guard let handle = objectHandle else {
            throw BPFError(.invalidState, operation: operation, subject: description, detail: "not a map of an object")
        }
        if isObjectLoaded {
            return body(try liveMapping(operation))
        }
        var size = 0
        guard let data = bpf_map__initial_value(handle, &size) else {
            throw BPFError(.invalidState, operation: operation, subject: description, detail: "the map holds no global variables")
        }
        return body(UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(mutating: data), count: size))
    }
}

extension BTFQuery {
    /// Offset and size of variable `name` in data section `section`, from the object's BTF.
    static func sectionVariable(_ object: BPFObject, section: String, name: String) -> (offset: Int, size: Int)? {
        guard let btf = bpf_object__btf(object.handle) else { return nil }
        let sectionID = btf__find_by_name_kind(btf, section, 15 /* BTF_KIND_DATASEC */)
        guard sectionID > 0, let datasec = btf__type_by_id(btf, UInt32(sectionID)) else { return nil }
        let variables = btf_var_secinfos(datasec)!
        for index in 0..<Int(btf_vlen(datasec)) {
            guard let variable = btf__type_by_id(btf, variables[index].type),
                  string(btf__name_by_offset(btf, variable.pointee.name_off)) == name else { continue }
            return (Int(variables[index].offset), Int(variables[index].size))
        }
        return nil
    }
}
