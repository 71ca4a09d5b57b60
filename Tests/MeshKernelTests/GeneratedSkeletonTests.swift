import BPF2Swift
import Foundation
import MeshKernel
import MeshTestSupport
import Testing

/// A C-side view of `struct outer`, computed in Swift the way `inspect` computes it in C.
private func expectedSum(_ outer: LayoutsObject.Outer) -> UInt64 {
    var sum = UInt64(outer.id) &+ outer.big &+ UInt64(outer.nested.tag) &+ UInt64(outer.nested.value) &+ outer.asU64
    sum &+= UInt64(outer.namedUnion.halves.low) &+ UInt64(outer.namedUnion.halves.high)
    sum &+= UInt64(outer.flagsA) &+ UInt64(outer.flagsB) &+ UInt64(outer.color.rawValue) &+ (outer.enabled ? 1 : 0)
    for row in outer.gridElements { sum &+= UInt64(row.0) &+ UInt64(row.1) &+ UInt64(row.2) }
    for byte in outer.labelElements { sum &+= UInt64(UInt8(bitPattern: byte)) }
    return sum
}

@Suite("bpf2swift: generated skeletons and C type mirrors", .kernel)
struct GeneratedSkeletonTests {
    func sampleOuter() -> LayoutsObject.Outer {
        var outer = LayoutsObject.Outer(id: 0xBEEF, big: 1 << 40 | 5, nested: .init(tag: 3, value: 70_000), color: .blue)
        outer.gridElements = [(1, 2, 3), (4, 5, 6)]
        outer.asU32 = (11, 22)                     // the anonymous union, seen from C as as_u64 and as_u32[]
        outer.namedUnion.halves = .init(low: 0x1234, high: 0x5678)
        outer.flagsA = 5                           // 3-bit field
        outer.flagsB = 4000                        // 12-bit field
        outer.signedBits = -7                      // 5-bit signed field
        outer.labelElements = Array("mesh!".utf8).map { Int8(bitPattern: $0) }
        outer.enabled = true
        return outer
    }

    @Test("generated types have the C sizes and the kernel reads Swift-written values exactly as C lays them out")
    func roundTripThroughKernel() throws {
        let skeleton = try LayoutsObject.open()
        try skeleton.globals.multiplier.set(3)
        let loaded = try skeleton.load()
        #expect(MemoryLayout<LayoutsObject.Outer>.size == skeleton.maps.outers.valueSize)
        #expect(MemoryLayout<LayoutsObject.Inner>.size == skeleton.maps.outers.keySize)
        #expect(MemoryLayout<LayoutsObject.Report>.size == skeleton.maps.reports.valueSize)

        let key = LayoutsObject.Inner(tag: 1, value: 42)
        let outer = sampleOuter()
        #expect(outer.flagsA == 5 && outer.flagsB == 4000 && outer.signedBits == -7)
        try loaded.maps.outers.insert(outer, for: key)
        #expect(try loaded.maps.outers.lookup(key) == outer)

        var context = key
        #expect(try loaded.programs.inspect.testRun(context: &context) == 0)
        let report = try loaded.maps.reports.value(at: 0)
        #expect(report.sum == expectedSum(outer) * 3)
        #expect(report.signedBits == -7)
        #expect(report.asU32High == 22)
        #expect(report.flagsA == 5 && report.flagsB == 4000)
        #expect(report.color == LayoutsObject.Color.blue.rawValue)
        #expect(report.enabled == 1)
        #expect(report.halvesHigh == 0x5678)
        #expect(report.grid12 == 6)

        // Per-CPU values: the CPU that ran `inspect` holds its write.
        let perCPU = try loaded.maps.perCpuInner.values(at: 0)
        #expect(perCPU.count == loaded.maps.perCpuInner.cpuCount)
        #expect(perCPU.filter { $0 == LayoutsObject.Inner(tag: 9, value: 70_000) }.count == 1)
        #expect(perCPU.filter { $0 != LayoutsObject.Inner() }.count == 1, "only the CPU that ran inspect was written")

        // Globals: .bss and .data live after load, .rodata frozen.
        #expect(try loaded.globals.calls.get() == 1)
        #expect(try loaded.globals.seeded.get() == 7)
        #expect(try loaded.globals.lastInner.get() == key)
        try loaded.globals.calls.set(100)
        _ = try loaded.programs.inspect.testRun(context: &context)
        #expect(try loaded.globals.calls.get() == 101)
        let frozen = try #require(throws: BPFError.self) { try loaded.globals.multiplier.set(4) }
        #expect(frozen.code == .invalidState)
        #expect(try loaded.globals.multiplier.get() == 3)
        // Writing the frozen map directly: the kernel's EPERM is not blamed on a missing capability.
        let direct = try #require(throws: BPFError.self) { try ArrayMap<UInt32>(loaded.object.map(".rodata")).set(9, at: 0) }
        #expect(direct.errno == .notPermitted)
        #expect(direct.code == .systemCall)
        #expect(direct.hint?.contains("frozen") == true)
    }

    @Test("a hand-written struct whose fields drifted is refused at open, naming the map, the field and both offsets")
    func driftedStructRefused() throws {
        struct DriftedInner: BTFMirror {
            var value: UInt32 = 0
            var tag: UInt8 = 0
            var padding: (UInt8, UInt8, UInt8) = (0, 0, 0)
            static let btfTypeName = "struct inner"
            static var btfMemberBitOffsets: [(member: String, bitOffset: Int)] {
                [("tag", MemoryLayout<Self>.offset(of: \Self.tag)! * 8), ("value", MemoryLayout<Self>.offset(of: \Self.value)! * 8)]
            }
        }
        let loaded = try LayoutsObject.open().load()
        let error = try #require(throws: BPFError.self) { try HashMap<DriftedInner, LayoutsObject.Outer>(loaded.object.map("outers")) }
        #expect(error.code == .sizeMismatch)
        #expect(error.subject == "map 'outers'")
        #expect(error.detail == "key field 'tag': Swift offset 4, BTF offset 0 in struct inner")

        struct UnknownMember: BTFMirror {
            var tag: UInt8 = 0
            var padding: (UInt8, UInt8, UInt8) = (0, 0, 0)
            var count: UInt32 = 0
            static let btfTypeName = "struct inner"
            static var btfMemberBitOffsets: [(member: String, bitOffset: Int)] { [("count", 32)] }
        }
        let unknown = try #require(throws: BPFError.self) { try HashMap<UnknownMember, LayoutsObject.Outer>(loaded.object.map("outers")) }
        #expect(unknown.detail?.contains("field 'count'") == true)
    }

    @Test("global variables are checked against the object's BTF")
    func globalsChecked() throws {
        let object = try BPFObject.open(.layouts)
        let wrongSize = try #require(throws: BPFError.self) { try GlobalVariable<UInt64>("multiplier", in: object, section: ".rodata", offset: 0) }
        #expect(wrongSize.code == .sizeMismatch)
        #expect(wrongSize.detail?.contains("offset 0 with 4 bytes") == true)
        let missing = try #require(throws: BPFError.self) { try GlobalVariable<UInt32>("nope", in: object, section: ".data", offset: 0) }
        #expect(missing.detail == "the object has no such variable")
    }

    @Test("packed members, unions, bools and colliding names get byte-exact, compilable Swift")
    func trickyLayouts() throws {
        let loaded = try TrickyObject.open().load()
        #expect(MemoryLayout<TrickyObject.Holder>.size == loaded.object.maps.first { $0.name == "object" }?.valueSize)
        #expect(MemoryLayout<TrickyObject.Holder>.size == 24 && MemoryLayout<TrickyObject.Pk>.size == 9)
        var holder = TrickyObject.Holder(tail: 7)
        holder.itemsElements = [TrickyObject.Pk(a: 1, b: 2), TrickyObject.Pk(a: 3, b: 4)]
        try loaded.maps.object.insert(holder, for: TrickyObject.ProgramsType(value: 1))
        #expect(try loaded.maps.object.lookup(TrickyObject.ProgramsType(value: 1))?.itemsElements.map(\.b) == [2, 4])
        // Union members overlap: the initializer assigns only the one given.
        #expect(TrickyObject.Weird(q: 5).q == 5)
        #expect(TrickyObject.Weird(halves: (1, 2)).q == 0x0002_0001)
        var weird = TrickyObject.Weird(srcIp: 1, srcIp_: 2, self_: 3, flag: true)
        #expect(weird.srcIp == 1 && weird.srcIp_ == 2 && weird.self_ == 3 && weird.flag)
        weird.flag = false
        #expect(!weird.flag)
        #expect(try loaded.programs.loaded.testRun() == 0)
    }

    @Test("generated enums, names and skeleton properties")
    func generatedNames() throws {
        #expect(LayoutsObject.Color.red.rawValue == 1 && LayoutsObject.Color.blue.rawValue == 400)
        #expect(Hit.rawTp.rawValue == 15)
        #expect(SockRedirectObject.AccelCounter.insertFailed.rawValue == 5)
        let skeleton = try MapsObject.open()
        #expect(skeleton.programs.produceEvents.sectionName == "syscall")
        #expect(skeleton.maps.cidrs.type == .lpmTrie)
        #expect(MapsObject.FlowKey.btfTypeName == "struct flow_key")
    }
}

@Suite("bpf2swift: the command on a user's own C")
struct GeneratorCommandTests {
    func generate(_ source: String) throws -> (ProcessResult, String) {
        return try withTemporaryDirectory("gen") { directory in
            let file = directory.appendingPathComponent("sample.bpf.c")
            try source.write(to: file, atomically: true, encoding: .utf8)
            let output = directory.appendingPathComponent("sample.swift")
            let tool = buildProductsDirectory.appendingPathComponent("bpf2swift").path
            let clang = try run(["which", "clang"]).check().output.trimmingCharacters(in: .whitespacesAndNewlines)
            let include = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../bpf/include").standardized.path
            let result = try run([tool, "--clang", clang, "--source", file.path, "--include", include, "--output", output.path])
            return (result, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
        }
    }

    @Test("generates a skeleton for a program outside the mesh")
    func generatesSkeleton() throws {
        let (result, swift) = try generate("""
            #include "mesh_common.h"
            char LICENSE[] SEC("license") = "GPL";
            struct sample { __u32 count; __u8 kind; };
            struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, struct sample); } samples SEC(".maps");
            SEC("syscall") int touch_sample(void *context) { return 0; }
            """)
        #expect(result.status == 0, "\(result.error)")
        #expect(swift.contains("internal struct SampleObject: Sendable"))
        #expect(swift.contains("internal let samples: HashMap<UInt32, Sample>"))
        #expect(swift.contains("internal let touchSample: BPFProgram"))
        #expect(swift.contains("private var _padding0: (UInt8, UInt8, UInt8)"))
    }

    @Test("refuses what has no Swift layout, naming the type and member")
    func refusesUnsupported() throws {
        let (wide, _) = try generate("""
            #include "mesh_common.h"
            char LICENSE[] SEC("license") = "GPL";
            struct wide { unsigned __int128 value; };
            struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct wide); } wides SEC(".maps");
            """)
        #expect(wide.status == 1)
        #expect(wide.error.contains("member 'value' of struct wide is a 128-bit integer"))

        let (flexible, _) = try generate("""
            #include "mesh_common.h"
            #include "bpf2swift.h"
            char LICENSE[] SEC("license") = "GPL";
            struct message { __u32 length; __u8 bytes[]; };
            BPF2SWIFT_EXPORT(struct message);
            """)
        #expect(flexible.status == 1)
        #expect(flexible.error.contains("flexible array member"))
    }

    @Test("the generator refuses corrupted objects with the reason")
    func refusesCorruptObjects() throws {
        var bytes = EmbeddedBPFObject.layouts.bytes
        bytes[0] = 0
        let error = #expect(throws: GeneratorError.self) {
            try SkeletonGenerator.generate(object: bytes, options: .init(objectName: "x", sourceFileName: "x.o"))
        }
        #expect(error?.description.contains("no ELF magic number") == true)
        let swift = try SkeletonGenerator.generate(object: EmbeddedBPFObject.layouts.bytes, options: .init(objectName: "layouts", sourceFileName: "layouts.bpf.c"))
        #expect(swift.contains("struct LayoutsObject"))
    }
}
