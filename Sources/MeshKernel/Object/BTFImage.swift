/// Structural checks on the `.BTF` and `.BTF.ext` sections of an object.
///
/// libbpf 1.1 trusts type ids and string offsets in BTF once its header
/// parses; a single corrupted id sends it through a wild pointer. These
/// checks walk every type record and every ext-info record and refuse ids
/// beyond the last type, string offsets beyond the string section, and
/// records that run past their section.
enum BTFImage {
    struct Invalid: Error {
        var reason: String
    }

    /// What the `.BTF.ext` check needs from a validated `.BTF`.
    struct Summary {
        var typeCount: UInt32
        var stringsLength: UInt32
    }

    private static let magic: UInt16 = 0xEB9F

    static func validate(_ section: UnsafeRawBufferPointer) throws(Invalid) -> Summary {
        let reader = Reader(bytes: section)
        guard section.count >= 24 else { throw Invalid(reason: ".BTF is shorter than its header") }
        guard try reader.u16(0) == magic else { throw Invalid(reason: ".BTF has a bad magic number") }
        let headerLength = try reader.u32(4)
        let typeOffset = try reader.u32(8), typeLength = try reader.u32(12)
        let stringOffset = try reader.u32(16), stringLength = try reader.u32(20)
        guard headerLength >= 24 else { throw Invalid(reason: ".BTF header length \(headerLength) is too short") }
        let typeStart = UInt64(headerLength) + UInt64(typeOffset)
        let stringStart = UInt64(headerLength) + UInt64(stringOffset)
        guard typeStart + UInt64(typeLength) <= UInt64(section.count),
              stringStart + UInt64(stringLength) <= UInt64(section.count)
        else { throw Invalid(reason: ".BTF type or string section runs past the section") }
        guard stringLength > 0, section[Int(stringStart)] == 0, section[Int(stringStart + UInt64(stringLength)) - 1] == 0 else {
            throw Invalid(reason: ".BTF strings are not NUL-delimited")
        }

        // First pass: find where every type record starts, so ids can be checked.
        var offsets: [Int] = []
        var position = Int(typeStart)
        let end = Int(typeStart) + Int(typeLength)
        while position < end {
            guard position + 12 <= end else { throw Invalid(reason: ".BTF type \(offsets.count + 1) is truncated") }
            let info = try reader.u32(position + 4)
            let vlen = Int(info & 0xFFFF)
            let kind = (info >> 24) & 0x1F
            let extra: Int
            switch kind {
            case 1, 14, 17: extra = 4                       // INT, VAR, DECL_TAG
            case 2, 7, 8, 9, 10, 11, 12, 16, 18: extra = 0  // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            case 3: extra = 12                              // ARRAY
            case 4, 5, 15, 19: extra = vlen * 12            // STRUCT, UNION, DATASEC, ENUM64
            case 6, 13: extra = vlen * 8                    // ENUM, FUNC_PROTO
            default: throw Invalid(reason: ".BTF type \(offsets.count + 1) has unknown kind \(kind)")
            }
            offsets.append(position)
            position += 12 + extra
        }
        guard position == end else { throw Invalid(reason: ".BTF type section has trailing bytes") }
        let count = UInt32(offsets.count)

        func checkType(_ id: UInt32, _ owner: Int) throws(Invalid) {
            guard id <= count else { throw Invalid(reason: ".BTF type \(owner) refers to type \(id); there are \(count)") }
        }
        func checkName(_ offset: UInt32, _ owner: Int) throws(Invalid) {
            guard offset < stringLength else { throw Invalid(reason: ".BTF type \(owner) has a name outside the strings") }
        }
        for (index, start) in offsets.enumerated() {
            let id = index + 1
            try checkName(try reader.u32(start), id)
            let info = try reader.u32(start + 4)
            let vlen = Int(info & 0xFFFF)
            let kind = (info >> 24) & 0x1F
            let sizeOrType = try reader.u32(start + 8)
            let body = start + 12
            switch kind {
            case 2, 8, 9, 10, 11, 12, 14, 17, 18, 13:
                try checkType(sizeOrType, id)
            case 3:
                try checkType(try reader.u32(body), id)
                try checkType(try reader.u32(body + 4), id)
            default:
                break
            }
            switch kind {
            case 4, 5:
                for member in 0..<vlen {
                    try checkName(try reader.u32(body + member * 12), id)
                    try checkType(try reader.u32(body + member * 12 + 4), id)
                }
            case 15:
                for variable in 0..<vlen { try checkType(try reader.u32(body + variable * 12), id) }
            case 6:
                for value in 0..<vlen { try checkName(try reader.u32(body + value * 8), id) }
            case 19:
                for value in 0..<vlen { try checkName(try reader.u32(body + value * 12), id) }
            case 13:
                for parameter in 0..<vlen {
                    try checkName(try reader.u32(body + parameter * 8), id)
                    try checkType(try reader.u32(body + parameter * 8 + 4), id)
                }
            default:
                break
            }
        }
        return Summary(typeCount: count, stringsLength: stringLength)
    }

    /// Checks `.BTF.ext` records: function info, line info, CO-RE relocations.
    static func validateExt(_ section: UnsafeRawBufferPointer, btf: Summary) throws(Invalid) {
        let reader = Reader(bytes: section)
        guard section.count >= 24 else { throw Invalid(reason: ".BTF.ext is shorter than its header") }
        guard try reader.u16(0) == magic else { throw Invalid(reason: ".BTF.ext has a bad magic number") }
        let headerLength = Int(try reader.u32(4))
        guard headerLength >= 24, headerLength <= section.count else { throw Invalid(reason: ".BTF.ext header length \(headerLength) is invalid") }
        // (offset field, minimum record size, type-id field offset or nil, string fields)
        var infos: [(Int, Int, Int?, [Int])] = [(8, 8, 4, []), (16, 16, nil, [4, 8])]
        if headerLength >= 32 { infos.append((24, 16, 4, [8])) }
        for (field, minimumRecord, typeField, stringFields) in infos {
            let offset = Int(try reader.u32(field)), length = Int(try reader.u32(field + 4))
            if length == 0 { continue }
            let start = headerLength + offset
            let end = start + length
            guard offset >= 0, end <= section.count, length >= 4 else { throw Invalid(reason: ".BTF.ext info runs past the section") }
            let recordSize = Int(try reader.u32(start))
            guard recordSize >= minimumRecord, recordSize % 4 == 0 else { throw Invalid(reason: ".BTF.ext record size \(recordSize) is invalid") }
            var position = start + 4
            while position < end {
                guard position + 8 <= end else { throw Invalid(reason: ".BTF.ext info block is truncated") }
                guard try reader.u32(position) < btf.stringsLength else { throw Invalid(reason: ".BTF.ext names a section outside the strings") }
                let records = Int(try reader.u32(position + 4))
                position += 8
                guard records <= (end - position) / recordSize else { throw Invalid(reason: ".BTF.ext info block overruns its section") }
                for record in 0..<records {
                    let base = position + record * recordSize
                    if let typeField {
                        guard try reader.u32(base + typeField) <= btf.typeCount else { throw Invalid(reason: ".BTF.ext refers to a missing type") }
                    }
                    for stringField in stringFields {
                        guard try reader.u32(base + stringField) < btf.stringsLength else { throw Invalid(reason: ".BTF.ext has a string outside the strings") }
                    }
                }
                position += records * recordSize
            }
        }
    }

    /// Bounds-checked little-endian reads.
    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        func u32(_ offset: Int) throws(Invalid) -> UInt32 {
            guard offset >= 0, offset + 4 <= bytes.count else { throw Invalid(reason: "BTF read at \(offset) past the section") }
            return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }
        func u16(_ offset: Int) throws(Invalid) -> UInt16 {
            guard offset >= 0, offset + 2 <= bytes.count else { throw Invalid(reason: "BTF read at \(offset) past the section") }
            return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
        }
    }
}
