import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Objects: open, inspect, adjust, load")
struct ObjectTests {
    @Test("an embedded object lists its programs and maps before load")
    func inspectBeforeLoad() throws {
        let object = try BPFObject.open(.maps)
        #expect(object.name == "maps")
        #expect(!object.isLoaded)
        let producer = try object.program("produce_events")
        #expect(producer.type == .syscall)
        #expect(producer.sectionName == "syscall")
        #expect(producer.instructionCount > 0)
        let flows = try object.map("flows")
        #expect(flows.type == .hash)
        #expect(flows.keySize == 8)
        #expect(flows.valueSize == 24)
        #expect(flows.maxEntries == 1024)
        #expect(try object.map("cidrs").flags.contains(.noPreallocation))
        #expect(object.maps.map(\.name).contains("events"))

        let attach = try BPFObject.open(.attachPoints)
        #expect(try attach.program("on_connect4").expectedAttachType == .cgroupConnect4)
        #expect(try attach.program("on_sock_ops").type == .sockOps)
        #expect(try attach.program("on_sk_msg").expectedAttachType == .skMsgVerdict)
        #expect(try attach.program("on_tp_btf").type == .tracing)
    }

    @Test("a missing program or map is a typed not-found error listing what exists")
    func notFound() throws {
        let object = try BPFObject.open(.maps)
        let error = try #require(throws: BPFError.self) { try object.program("nope") }
        #expect(error.code == .notFound)
        #expect(error.detail?.contains("produce_events") == true)
        let mapError = try #require(throws: BPFError.self) { try object.map("nope") }
        #expect(mapError.code == .notFound)
    }

    @Test("max entries can be changed before load and not after", .kernel)
    func adjustBeforeLoad() throws {
        let object = try BPFObject.open(.maps)
        try object.map("tiny_hash").setMaxEntries(7)
        try object.load()
        #expect(object.isLoaded)
        #expect(try object.map("tiny_hash").maxEntries == 7)
        let error = try #require(throws: BPFError.self) { try object.map("tiny_hash").setMaxEntries(9) }
        #expect(error.code == .invalidState)
        let again = try #require(throws: BPFError.self) { try object.load() }
        #expect(again.code == .invalidState)
    }

    @Test("a program left out of autoload is not loaded", .kernel)
    func autoload() throws {
        let object = try BPFObject.open(.rejected)
        try object.program("read_past_value").setAutoload(false)
        try object.load()
        #expect(try object.program("harmless").testRun() == 0)
        let error = try #require(throws: BPFError.self) { try object.program("read_past_value").descriptor() }
        #expect(error.code == .invalidState)
    }

    @Test("a verifier rejection names the program and carries the verifier's whole log", .kernel)
    func verifierRejection() throws {
        let object = try BPFObject.open(.rejected)
        let error = try #require(throws: BPFError.self) { try object.load() }
        #expect(error.code == .verifierRejected)
        #expect(error.errno == .permissionDenied)
        #expect(error.subject?.contains("read_past_value") == true)
        let log = try #require(error.verifierLog)
        #expect(log.contains("invalid access to map value, value_size=8 off=16 size=8"))
        // The whole log: from the first instruction to the verifier's closing summary.
        #expect(log.contains("\n0: "))
        #expect(log.contains("processed ") && log.contains(" insns "))
        #expect("\(error)".contains("-- verifier log --"))
        #expect(!object.isLoaded)
    }

    @Test("an object opens from a file as well as from embedded bytes", .kernel)
    func openFromFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(uniqueName("obj")).bpf.o").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(EmbeddedBPFObject.maps.bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let object = try BPFObject.open(file: path)
        #expect(object.name == path.split(separator: "/").last.map { String($0.dropLast(6)) })
        try object.load()
        #expect(try object.program("bump_counters").id != nil)
        let missing = try #require(throws: BPFError.self) { try BPFObject.open(file: path + ".missing") }
        #expect(missing.errno == .noSuchFileOrDirectory)
    }

    @Test("releasing a loaded object frees its programs and maps in the kernel", .kernel)
    func releaseFreesKernelObjects() throws {
        var programID: UInt32 = 0
        var mapID: UInt32 = 0
        do {
            let object = try BPFObject.open(.maps)
            try object.load()
            programID = try #require(try object.program("produce_events").id)
            mapID = try object.map("flows").id
            #expect(KernelObjects.programExists(id: programID))
            #expect(KernelObjects.mapExists(id: mapID))
        }
        #expect(eventually { !KernelObjects.programExists(id: programID) && !KernelObjects.mapExists(id: mapID) })
    }
}
