import CBPFShim

/// Reads what MeshKernel needs from an object's BTF.
enum BTFQuery {
    /// The key and value types a map's definition in `.maps` declares
    /// (`__type(key, T)`), for map types whose BTF ids libbpf clears before
    /// creating them (sockmap, sockhash and others the kernel refuses BTF for).
    static func declaredTypes(_ btf: OpaquePointer, map name: String) -> (key: UInt32, value: UInt32)? {
        let sectionID = btf__find_by_name_kind(btf, ".maps", 15 /* BTF_KIND_DATASEC */)
        guard sectionID > 0, let section = btf__type_by_id(btf, UInt32(sectionID)) else { return nil }
        let variables = btf_var_secinfos(section)!
        for index in 0..<Int(btf_vlen(section)) {
            guard let variable = btf__type_by_id(btf, variables[index].type),
                  string(btf__name_by_offset(btf, variable.pointee.name_off)) == name else { continue }
            let definitionID = btf__resolve_type(btf, variable.pointee.type)
            guard definitionID > 0, let definition = btf__type_by_id(btf, UInt32(definitionID)), btf_is_composite(definition) else { return nil }
            let members = btf_members(definition)!
            var key: UInt32 = 0
            var value: UInt32 = 0
            for member in 0..<Int(btf_vlen(definition)) {
                let memberName = string(btf__name_by_offset(btf, members[member].name_off))
                guard memberName == "key" || memberName == "value",
                      let pointer = btf__type_by_id(btf, members[member].type), btf_is_ptr(pointer) else { continue }
                if memberName == "key" { key = pointer.pointee.type } else { value = pointer.pointee.type }
            }
            return (key, value)
        }
        return nil
    }

    /// The name BTF gives a type, such as `struct sock_key` or `__u32`.
    static func typeName(_ btf: OpaquePointer, _ id: UInt32) -> String {
        guard let type = btf__type_by_id(btf, id) else { return "#\(id)" }
        if let name = btf__name_by_offset(btf, type.pointee.name_off), name.pointee != 0 {
            let prefix = btf_is_struct(type) ? "struct " : btf_is_union(type) ? "union " : ""
            return prefix + String(cString: name)
        }
        return "#\(id)"
    }
}
