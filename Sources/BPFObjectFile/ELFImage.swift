/// Structural checks on a BPF ELF object image, and its sections by name.
///
/// libbpf trusts many offsets and indices of the file it reads; a truncated,
/// corrupted or hostile object must be refused here with a clear error rather
/// than reach that code. The checks cover what libbpf dereferences: the
/// header, the section table, string tables, symbol tables and relocation
/// sections.
public enum ELFImage {
    /// Why an image was refused.
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        /// What is wrong, in one line.
        public var reason: String
        /// Creates the error.
        public init(reason: String) { self.reason = reason }
        public var description: String { reason }
    }

    /// One section of a validated image.
    public struct Section: Sendable {
        /// The section's name, such as `.BTF` or `sockops`.
        public var name: String
        /// The byte range of its contents in the image (empty for `SHT_NOBITS`).
        public var range: Range<Int>
        /// Whether it holds code (`SHF_EXECINSTR`).
        public var isExecutable: Bool
    }

    /// A symbol of a validated image.
    public struct Symbol: Sendable {
        /// The symbol's name.
        public var name: String
        /// The name of the section it is defined in.
        public var section: String
        /// Its value: the offset in its section.
        public var value: Int
        /// Whether it is a global function (`STT_FUNC`, `STB_GLOBAL`).
        public var isGlobalFunction: Bool
        /// Whether it is a data object (`STT_OBJECT`).
        public var isObject: Bool
        /// Whether its section holds code.
        public var inCode: Bool
    }

    /// The symbols of a validated image (`.symtab` with `.strtab`).
    public static func symbols(_ image: UnsafeRawBufferPointer, sections: [Section]) -> [Symbol] {
        guard let table = sections.first(where: { $0.name == ".symtab" }),
              let strings = sections.first(where: { $0.name == ".strtab" }) else { return [] }
        var symbols: [Symbol] = []
        for start in stride(from: table.range.lowerBound, to: table.range.upperBound - symbolSize + 1, by: symbolSize) {
            let nameOffset = Int(UInt32(littleEndian: image.loadUnaligned(fromByteOffset: start, as: UInt32.self)))
            let info = image[start + 4]
            let index = Int(UInt16(littleEndian: image.loadUnaligned(fromByteOffset: start + 6, as: UInt16.self)))
            let value = UInt64(littleEndian: image.loadUnaligned(fromByteOffset: start + 8, as: UInt64.self))
            guard index > 0, index < sections.count, strings.range.lowerBound + nameOffset < strings.range.upperBound,
                  value <= UInt64(Int32.max) else { continue }
            let name = String(decoding: image[(strings.range.lowerBound + nameOffset)..<strings.range.upperBound].prefix { $0 != 0 }, as: UTF8.self)
            symbols.append(Symbol(name: name, section: sections[index].name, value: Int(value),
                                  isGlobalFunction: info & 0xF == 2 && info >> 4 == 1, isObject: info & 0xF == 1,
                                  inCode: sections[index].isExecutable))
        }
        return symbols
    }

    /// The BPF programs of a validated image: global functions in code
    /// sections other than `.text`, with the section each lives in.
    public static func programs(_ image: UnsafeRawBufferPointer, sections: [Section]) -> [(name: String, section: String)] {
        programs(in: symbols(image, sections: sections))
    }

    /// The BPF programs among already-read symbols.
    public static func programs(in symbols: [Symbol]) -> [(name: String, section: String)] {
        symbols.filter { $0.isGlobalFunction && $0.inCode && $0.section != ".text" }.map { ($0.name, $0.section) }
    }

    private static let headerSize = 64
    private static let sectionHeaderSize = 64
    private static let symbolSize = 24
    private static let relocationSize = 16
    private static let machineBPF: UInt16 = 247

    private enum SectionType: UInt32 {
        case symbolTable = 2, stringTable = 3, relocation = 9, noBits = 8
    }

    private struct Header {
        var name: UInt32
        var type: UInt32
        var flags: UInt64
        var offset: UInt64
        var size: UInt64
        var link: UInt32
        var info: UInt32
        var entrySize: UInt64
    }

    /// Checks what libbpf dereferences — header, section table, string and
    /// symbol tables, relocations, and the `.BTF`/`.BTF.ext` records — and
    /// returns the sections.
    public static func validate(_ image: UnsafeRawBufferPointer) throws(Invalid) -> [Section] {
        func invalid(_ reason: String) -> Invalid { Invalid(reason: reason) }
        func read<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
            T(littleEndian: image.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        let size = UInt64(image.count)
        guard image.count >= headerSize else { throw invalid("\(image.count) bytes is shorter than an ELF header") }
        guard image[0] == 0x7F, image[1] == UInt8(ascii: "E"), image[2] == UInt8(ascii: "L"), image[3] == UInt8(ascii: "F") else {
            throw invalid("no ELF magic number")
        }
        guard image[4] == 2 else { throw invalid("not a 64-bit ELF file (class \(image[4]))") }
        guard image[5] == 1 else { throw invalid("not a little-endian ELF file (data encoding \(image[5]))") }
        let machine: UInt16 = read(18, as: UInt16.self)
        guard machine == machineBPF else { throw invalid("ELF machine \(machine) is not BPF (247)") }
        let sectionTableOffset: UInt64 = read(40, as: UInt64.self)
        let sectionEntrySize: UInt16 = read(58, as: UInt16.self)
        let sectionCount = Int(read(60, as: UInt16.self) as UInt16)
        let namesIndex = Int(read(62, as: UInt16.self) as UInt16)
        guard sectionEntrySize == sectionHeaderSize else { throw invalid("section header size \(sectionEntrySize), expected 64") }
        guard sectionCount > 0 else { throw invalid("no sections") }
        let (tableEnd, overflow) = sectionTableOffset.addingReportingOverflow(UInt64(sectionCount * sectionHeaderSize))
        guard !overflow, tableEnd <= size else { throw invalid("section table at \(sectionTableOffset) runs past the end of the file") }
        guard namesIndex > 0, namesIndex < sectionCount else { throw invalid("section-name table index \(namesIndex) out of range") }

        var sections: [Header] = []
        sections.reserveCapacity(sectionCount)
        for index in 0..<sectionCount {
            let base = Int(sectionTableOffset) + index * sectionHeaderSize
            sections.append(Header(
                name: read(base, as: UInt32.self), type: read(base + 4, as: UInt32.self),
                flags: read(base + 8, as: UInt64.self), offset: read(base + 24, as: UInt64.self),
                size: read(base + 32, as: UInt64.self), link: read(base + 40, as: UInt32.self),
                info: read(base + 44, as: UInt32.self), entrySize: read(base + 56, as: UInt64.self)))
        }
        let null = sections[0]
        guard null.name == 0, null.type == 0, null.flags == 0, null.offset == 0, null.size == 0, null.link == 0, null.info == 0 else {
            throw invalid("section 0 is not the null section")
        }
        for (index, section) in sections.enumerated() where index > 0 {
            if section.type != SectionType.noBits.rawValue {
                let (end, overflow) = section.offset.addingReportingOverflow(section.size)
                guard !overflow, end <= size else { throw invalid("section \(index) runs past the end of the file") }
            }
            guard section.link < sectionCount else { throw invalid("section \(index) links to missing section \(section.link)") }
            if section.flags & 0x4 != 0, section.size % 8 != 0 {  // SHF_EXECINSTR
                throw invalid("code section \(index) is not a whole number of instructions")
            }
        }
        func stringTable(_ index: Int) throws(Invalid) -> Header {
            guard index > 0 else { throw invalid("a string table link points at the null section") }
            let table = sections[index]
            guard table.type == SectionType.stringTable.rawValue, table.size > 0,
                  image[Int(table.offset + table.size - 1)] == 0
            else { throw invalid("section \(index) is not a NUL-terminated string table") }
            return table
        }
        let names = try stringTable(namesIndex)
        for (index, section) in sections.enumerated() where UInt64(section.name) >= names.size {
            throw invalid("section \(index) has a name outside the section-name table")
        }
        func sectionName(_ section: Header) -> String {
            let start = Int(names.offset) + Int(section.name)
            let end = Int(names.offset + names.size)
            return String(decoding: image[start..<end].prefix { $0 != 0 }, as: UTF8.self)
        }
        func contents(_ section: Header) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: image[Int(section.offset)..<Int(section.offset + section.size)])
        }
        let named = sections.dropFirst()
        if let btfSection = named.first(where: { sectionName($0) == ".BTF" && $0.type != SectionType.noBits.rawValue }) {
            let types = try BTFTypeTable(section: contents(btfSection))
            if let ext = named.first(where: { sectionName($0) == ".BTF.ext" && $0.type != SectionType.noBits.rawValue }) {
                try types.validateExt(contents(ext))
            }
        }
        var symbolCounts: [Int: Int] = [:]
        for (index, section) in sections.enumerated() where index > 0 && section.type == SectionType.symbolTable.rawValue {
            guard section.entrySize == symbolSize, section.size % UInt64(symbolSize) == 0 else {
                throw invalid("symbol table \(index) has entries of \(section.entrySize) bytes")
            }
            let strings = try stringTable(Int(section.link))
            let count = Int(section.size) / symbolSize
            for symbol in 0..<count {
                let base = Int(section.offset) + symbol * symbolSize
                let nameOffset: UInt32 = read(base, as: UInt32.self)
                let sectionIndex: UInt16 = read(base + 6, as: UInt16.self)
                guard UInt64(nameOffset) < strings.size else { throw invalid("symbol \(symbol) has a name outside its string table") }
                guard Int(sectionIndex) < sectionCount || sectionIndex >= 0xFF00 else {
                    throw invalid("symbol \(symbol) refers to missing section \(sectionIndex)")
                }
            }
            symbolCounts[index] = count
        }
        for (index, section) in sections.enumerated() where index > 0 && section.type == SectionType.relocation.rawValue {
            guard section.entrySize == relocationSize, section.size % UInt64(relocationSize) == 0 else {
                throw invalid("relocation section \(index) has entries of \(section.entrySize) bytes")
            }
            guard let symbols = symbolCounts[Int(section.link)] else {
                throw invalid("relocation section \(index) does not link to a symbol table")
            }
            guard Int(section.info) < sectionCount else { throw invalid("relocation section \(index) targets missing section \(section.info)") }
            let target = sections[Int(section.info)]
            for entry in 0..<(Int(section.size) / relocationSize) {
                let base = Int(section.offset) + entry * relocationSize
                let offset: UInt64 = read(base, as: UInt64.self)
                let info: UInt64 = read(base + 8, as: UInt64.self)
                guard Int(info >> 32) < symbols else { throw invalid("relocation \(entry) of section \(index) refers to missing symbol \(info >> 32)") }
                guard offset < target.size else { throw invalid("relocation \(entry) of section \(index) points past its section") }
            }
        }
        // Only sections with contents had their ranges checked above; the others get an empty range.
        return sections.enumerated().map { index, header in
            let hasContents = index > 0 && header.type != SectionType.noBits.rawValue
            let range = hasContents ? Int(header.offset)..<Int(header.offset + header.size) : 0..<0
            return Section(name: sectionName(header), range: range, isExecutable: header.flags & 0x4 != 0)
        }
    }
}