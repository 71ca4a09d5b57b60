import Foundation
import MeshKernel
import MeshTestSupport
import Testing

/// A small deterministic generator, so a failing mutation can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Malformed objects: errors, never crashes")
struct MalformedObjectTests {
    let original = EmbeddedBPFObject.attachPoints.bytes

    /// Opens `bytes`; returns whether it opened. A failure must be a typed invalid-object error.
    func open(_ bytes: [UInt8], load: Bool = false) -> Bool {
        if let path = ProcessInfo.processInfo.environment["MK_FUZZ_DUMP"] {
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))  // replay a crash
        }
        do {
            let object = try BPFObject.open(bytes: bytes, name: "mutant")
            if load { try? object.load() }
            return true
        } catch {
            #expect(error.code == .invalidObject, "unexpected error: \(error)")
            return false
        }
    }

    @Test("empty, tiny and non-ELF inputs are refused with a reason")
    func garbage() {
        for bytes in [[], [0x7F], Array("not an object".utf8), [UInt8](repeating: 0, count: 4096)] {
            let error = #expect(throws: BPFError.self) { try BPFObject.open(bytes: bytes, name: "garbage") }
            #expect(error?.code == .invalidObject)
            #expect(error?.errno == .execFormatError)
            #expect(error?.detail?.isEmpty == false)
        }
    }

    /// Patches the header of section 0 (the null section) of `original`.
    func patchNullSection(name: UInt32? = nil, type: UInt32? = nil, offset: UInt64? = nil, link: UInt32? = nil) -> [UInt8] {
        var bytes = original
        let table = bytes.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 40, as: UInt64.self))) }
        bytes.withUnsafeMutableBytes { image in
            if let name { image.storeBytes(of: name.littleEndian, toByteOffset: table, as: UInt32.self) }
            if let type { image.storeBytes(of: type.littleEndian, toByteOffset: table + 4, as: UInt32.self) }
            if let offset { image.storeBytes(of: offset.littleEndian, toByteOffset: table + 24, as: UInt64.self) }
            if let link { image.storeBytes(of: link.littleEndian, toByteOffset: table + 40, as: UInt32.self) }
        }
        return bytes
    }

    @Test("a crafted null section (named .BTF with a wild offset, or a symbol table with a wild link) is refused")
    func craftedNullSection() {
        // The name offset of ".BTF" in the section-name table: any non-zero name makes section 0 invalid.
        for bytes in [patchNullSection(name: 1, offset: 0x7FFF_FFFF_FFFF_0000), patchNullSection(type: 2, link: 60_000), patchNullSection(type: 3)] {
            let error = #expect(throws: BPFError.self) { try BPFObject.open(bytes: bytes, name: "crafted") }
            #expect(error?.code == .invalidObject)
            #expect(error?.detail == "section 0 is not the null section")
        }
    }

    @Test("an embedded object whose text is not base64 is reported as such")
    func corruptEmbeddedText() {
        let error = #expect(throws: BPFError.self) { try BPFObject.open(EmbeddedBPFObject(name: "broken", base64: "not*base64")) }
        #expect(error?.code == .invalidObject)
        #expect(error?.detail == "the embedded object is not valid base64")
    }

    @Test("every truncation of a valid object is refused")
    func truncations() {
        #expect(original.count > 1_000)
        var refused = 0
        let lengths = Array(stride(from: 0, to: original.count, by: max(1, original.count / 1_500)))
        for length in lengths where !open(Array(original[0..<length])) {
            refused += 1
        }
        #expect(refused == lengths.count, "a truncated object opened")
    }

    @Test("thousands of random mutations produce errors or objects, never crashes", .kernel)
    func randomMutations() {
        // MK_FUZZ_SEED and MK_FUZZ_ROUNDS explore beyond the fixed CI corpus.
        let environment = ProcessInfo.processInfo.environment
        var generator = SplitMix64(state: environment["MK_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_0B1E_C7F0_22ED)
        let rounds = environment["MK_FUZZ_ROUNDS"].flatMap { Int($0) } ?? 3_000
        var opened = 0
        for round in 0..<rounds {
            var bytes = original
            switch round % 4 {
            case 0:  // flip a few random bits anywhere
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    let index = Int.random(in: 0..<bytes.count, using: &generator)
                    bytes[index] ^= UInt8(1) << UInt8.random(in: 0...7, using: &generator)
                }
            case 1:  // overwrite a byte of the ELF header or the section table
                let tableOffset = Int(bytes[40]) | Int(bytes[41]) << 8 | Int(bytes[42]) << 16
                let region = Bool.random(using: &generator) ? 0..<64 : tableOffset..<min(bytes.count, tableOffset + 64 * 12)
                bytes[Int.random(in: region, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            case 2:  // overwrite a random run with random bytes
                let start = Int.random(in: 0..<bytes.count, using: &generator)
                for index in start..<min(bytes.count, start + Int.random(in: 1...32, using: &generator)) {
                    bytes[index] = UInt8.random(in: 0...255, using: &generator)
                }
            default:  // truncate and append garbage
                bytes.removeLast(Int.random(in: 1..<bytes.count, using: &generator))
                bytes += (0..<Int.random(in: 0...256, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            // Load some of the mutants too: the verifier and the loader must cope as well.
            if open(bytes, load: round % 25 == 0) { opened += 1 }
        }
        // Flipped bits in code or padding still give loadable objects; headers do not.
        #expect(opened > 0 && opened < rounds)
    }
}
