import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Cgroups", .kernel)
struct CgroupTests {
    @Test("a cgroup's id is what BPF programs see for processes moved into it")
    func idMatchesKernel() throws {
        let object = try BPFObject.open(.attachPoints)
        try object.load()
        let lastCgroup = try ArrayMap<UInt64>(object.map("last_cgroup"))
        try withCgroup("cid") { cgroup in
            let link = try object.program("on_sock_create").attach(to: cgroup)
            defer { link.close() }
            try runInCgroup(cgroup.path, "python3 -c 'import socket; socket.socket()'").check()
            #expect(try lastCgroup.value(at: 0) == cgroup.id())
        }
    }

    @Test("processes can be moved in and listed; removal moves stragglers out first")
    func membership() throws {
        let cgroup = try Cgroup.create(uniqueName("mem"))
        defer { try? cgroup.remove() }
        let sleeper = try Background(cgroupCommand(cgroup.path, "sleep 30"))
        defer { sleeper.stop() }
        let pid = sleeper.pid
        #expect(try eventually { try cgroup.processes() == [pid] })
        #expect(try Cgroup.of(process: pid) == cgroup)
        try cgroup.remove()
        #expect(!FileManager.default.fileExists(atPath: cgroup.path))
        #expect(try Cgroup.of(process: pid) != cgroup)
        try cgroup.remove()  // already gone: no error
    }

    @Test("a cgroup with a child cgroup is not removed, at once and saying why; without it, it is")
    func removeWithChild() throws {
        let parent = try Cgroup.create(uniqueName("parent"))
        defer { try? parent.remove() }
        let child = try Cgroup.create("child", under: parent)
        defer { try? child.remove() }
        let start = ContinuousClock.now
        let error = #expect(throws: BPFError.self) { try parent.remove() }
        #expect(ContinuousClock.now - start < .seconds(1), "a refusal that cannot clear is not retried")
        #expect(error?.description.contains("child cgroups: child") == true, "\(String(describing: error))")
        #expect(FileManager.default.fileExists(atPath: child.path))
        try child.remove()
        try parent.remove()
        #expect(!FileManager.default.fileExists(atPath: parent.path))
    }

    @Test("names that are not one path component are refused")
    func badNames() {
        for name in ["", "a/b", "..", "."] {
            let error = #expect(throws: BPFError.self) { try Cgroup.create(name) }
            #expect(error?.code == .invalidArgument)
        }
    }
}
