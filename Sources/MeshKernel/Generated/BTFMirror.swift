import CBPFShim

/// A Swift type that mirrors a C struct or union of a BPF object, as
/// `bpf2swift` generates them.
///
/// Typed maps check such a type member by member against the object's BTF
/// when they are opened, so a Swift type that has drifted from its C
/// definition is refused with the map, the field and both offsets named.
public protocol BTFMirror: BitwiseCopyable {
    /// The C type's name as BTF gives it, such as `struct flow_key`.
    static var btfTypeName: String { get }
    /// Each mirrored C member (dotted through anonymous members) with its bit
    /// offset in the Swift layout.
    static var btfMemberBitOffsets: [(member: String, bitOffset: Int)] { get }
}

extension MapAccess {
    /// Compares a ``BTFMirror``'s member offsets with the BTF type `id`.
    static func checkMirror<T>(_ type: T.Type, role: String, btf: OpaquePointer, id: UInt32, map: BPFMap) throws(BPFError) {
        guard let mirror = type as? any BTFMirror.Type else { return }
        let cName = BTFQuery.typeName(btf, UInt32(max(0, btf__resolve_type(btf, id))))
        guard mirror.btfTypeName == cName || mirror.btfTypeName.hasSuffix("(anonymous)") else {
            throw BPFError(.sizeMismatch, operation: "open typed map", subject: map.description,
                           hint: "use the Swift type generated for this map's \(role)",
                           detail: "\(role) type \(T.self) mirrors \(mirror.btfTypeName), but the map's \(role) is \(cName)")
        }
        let cOffsets = BTFQuery.memberBitOffsets(btf, id)
        for (member, swiftOffset) in mirror.btfMemberBitOffsets {
            guard let cOffset = cOffsets[member] else {
                throw BPFError(.sizeMismatch, operation: "open typed map", subject: map.description,
                               hint: "regenerate the Swift types from the object (bpf2swift)",
                               detail: "\(role) field '\(member)' of \(T.self) has no member in the object's \(BTFQuery.typeName(btf, id))")
            }
            guard cOffset == swiftOffset else {
                throw BPFError(.sizeMismatch, operation: "open typed map", subject: map.description,
                               hint: "regenerate the Swift types from the object (bpf2swift)",
                               detail: "\(role) field '\(member)': Swift offset \(describe(swiftOffset)), BTF offset \(describe(cOffset)) in \(BTFQuery.typeName(btf, id))")
            }
        }
    }

    private static func describe(_ bits: Int) -> String {
        bits % 8 == 0 ? "\(bits / 8)" : "\(bits / 8) (+\(bits % 8) bits)"
    }
}

extension BTFQuery {
    /// Bit offsets of every named member of a struct or union, descending into
    /// anonymous members and naming nested ones `outer.inner`.
    static func memberBitOffsets(_ btf: OpaquePointer, _ id: UInt32, prefix: String = "", base: Int = 0) -> [String: Int] {
        let resolved = btf__resolve_type(btf, id)
        guard resolved > 0, let type = btf__type_by_id(btf, UInt32(resolved)), btf_is_composite(type) else { return [:] }
        var offsets: [String: Int] = [:]
        let members = btf_members(type)!
        for index in 0..<Int(btf_vlen(type)) {
            let name = string(btf__name_by_offset(btf, members[index].name_off))
            let offset = base + Int(btf_member_bit_offset(type, UInt32(index)))
            if name.isEmpty {
                offsets.merge(memberBitOffsets(btf, members[index].type, prefix: prefix, base: offset)) { first, _ in first }
            } else {
                offsets[prefix + name] = offset
                offsets.merge(memberBitOffsets(btf, members[index].type, prefix: prefix + name + ".", base: offset)) { first, _ in first }
            }
        }
        return offsets
    }
}
