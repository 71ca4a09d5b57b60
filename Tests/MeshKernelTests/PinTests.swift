import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Pinning with a policy for existing pins", .kernel)
struct PinTests {
    func loadPinned(_ folder: PinFolder, policy: PinPolicy, maxEntries: Int? = nil) throws -> BPFObject {
        let object = try BPFObject.open(.maps)
        if let maxEntries { try object.map("flows").setMaxEntries(maxEntries) }
        try object.pinMaps(["flows"], in: folder, policy: policy)
        try object.load()
        return object
    }

    @Test("a compatible pin is reused: a second object sees the first one's data")
    func reuse() throws {
        try withPinFolder { folder in
            let first = try loadPinned(folder, policy: .reuseIfCompatible)
            let key = FlowKey(address: 7, port: 7, protocol: 7)
            try HashMap<FlowKey, FlowStats>(first.map("flows")).insert(FlowStats(packets: 1, bytes: 2, lastSeen: 3, flags: 4), for: key)
            #expect(folder.pins() == ["flows"])
            let second = try loadPinned(folder, policy: .reuseIfCompatible)
            #expect(try HashMap<FlowKey, FlowStats>(second.map("flows")).lookup(key)?.bytes == 2)
            #expect(try first.map("flows").id == second.map("flows").id)
            // bpftool reads the pin as a user would.
            let dump = try run(["bpftool", "map", "show", "pinned", folder.path(for: "flows")]).check()
            #expect(dump.output.contains("flows"))
        }
    }

    @Test("an incompatible pin is refused, naming the field that differs")
    func incompatible() throws {
        try withPinFolder { folder in
            let first = try loadPinned(folder, policy: .reuseIfCompatible)
            let error = try #require(throws: BPFError.self) { try loadPinned(folder, policy: .reuseIfCompatible, maxEntries: 2048) }
            #expect(error.code == .pinIncompatible)
            #expect(error.detail == "max entries: pinned 1024, object defines 2048")
            #expect(error.hint?.contains(".replace") == true)
            _ = first
        }
    }

    @Test("replace discards the old pin; fail refuses to touch it")
    func replaceAndFail() throws {
        try withPinFolder { folder in
            let first = try loadPinned(folder, policy: .reuseIfCompatible)
            let oldID = try first.map("flows").id
            let failed = try #require(throws: BPFError.self) { try loadPinned(folder, policy: .fail) }
            #expect(failed.code == .pinExists)
            let replaced = try loadPinned(folder, policy: .replace, maxEntries: 2048)
            let pinned = try BPFMap.open(pinned: folder.path(for: "flows"))
            #expect(pinned.maxEntries == 2048)
            #expect(pinned.id == (try replaced.map("flows").id))
            #expect(pinned.id != oldID)
        }
    }

    @Test("a pin folder needs bpffs, one opened as it exists is never created, and removing it removes every pin")
    func folderRules() throws {
        let notBPFFS = try #require(throws: BPFError.self) { try PinFolder(instance: "x", root: NSTemporaryDirectory()) }
        #expect(notBPFFS.code == .notMounted)
        #expect(notBPFFS.hint?.contains("mount -t bpf bpf") == true)
        #expect(throws: BPFError.self) { try PinFolder(instance: "../escape") }
        let folder = try PinFolder(instance: uniqueName("rm"))
        // Another process's folder, opened and never created.
        #expect(try PinFolder(existingAt: folder.path + "//") == folder)
        let missing = try #require(throws: BPFError.self) { try PinFolder(existingAt: folder.path + "-not-made") }
        #expect(missing.code == .notFound && !FileManager.default.fileExists(atPath: folder.path + "-not-made"), "\(missing)")
        let elsewhere = try #require(throws: BPFError.self) { try PinFolder(existingAt: NSTemporaryDirectory()) }
        #expect(elsewhere.code == .notMounted, "\(elsewhere)")
        #expect(throws: BPFError.self) { try PinFolder(existingAt: "sys/fs/bpf") }   // not absolute
        let object = try BPFObject.open(.maps)
        try object.pinMaps(in: folder, policy: .fail)
        try object.load()
        #expect(folder.pins().contains("flows") && folder.pins().contains("events"))
        try folder.remove()
        #expect(!FileManager.default.fileExists(atPath: folder.path))
    }
}
