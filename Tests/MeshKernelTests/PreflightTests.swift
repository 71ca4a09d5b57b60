import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Preflight: what is missing, and the fix")
struct PreflightTests {
    @Test("as root on this machine every requirement is met", .kernel)
    func allPass() throws {
        let report = SystemCheck.run()
        #expect(report.failures.isEmpty, "\(report)")
        #expect(report.findings.map(\.name).contains("CAP_BPF"))
        try report.requireAll()
        #expect(SystemCheck.checkCgroupV2().detail.contains(try Cgroup.v2MountPoint()))
    }

    @Test("a directory that is not bpffs is reported with the mount command, and mounting fixes it", .kernel)
    func bpffsMount() throws {
        let path = NSTemporaryDirectory() + uniqueName("bpffs")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer {
            umount(path)
            rmdir(path)
        }
        let finding = SystemCheck.checkBPFFS(at: path)
        let error = try #require(finding.error)
        #expect(error.code == .notMounted)
        #expect(error.hint?.contains("mount -t bpf bpf \(path)") == true)
        #expect("\(finding)".hasPrefix("FAIL"))
        try SystemCheck.mountBPFFS(at: path)
        #expect(SystemCheck.checkBPFFS(at: path).passed)
        #expect(throws: Never.self) { try PinFolder(instance: "probe", root: path).remove() }
    }

    @Test("a process without CAP_BPF and CAP_SYS_ADMIN is told which capability is missing and how to fix it", .kernel)
    func missingCapability() throws {
        let tool = buildProductsDirectory.appendingPathComponent("mesh-preflight").path
        #expect(FileManager.default.isExecutableFile(atPath: tool), "build the package first: swift build")
        let result = try run(["capsh", "--drop=cap_bpf,cap_sys_admin,cap_perfmon", "--", "-c", tool])
        #expect(result.status == 1)
        #expect(result.output.contains("FAIL CAP_BPF"))
        #expect(result.output.contains("FAIL CAP_SYS_ADMIN"))
        #expect(result.output.contains("ok   CAP_NET_ADMIN"))
        #expect(result.output.contains("setcap cap_bpf,cap_net_admin,cap_sys_admin,cap_perfmon+ep"))
        // The attempt to create a map fails with the typed error, not a crash.
        #expect(result.output.contains("missing capability, EPERM"))
        // With every capability the same tool passes.
        let privileged = try run([tool])
        #expect(privileged.status == 0, "\(privileged.output)")
    }
}
