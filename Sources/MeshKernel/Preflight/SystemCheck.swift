import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// Checks that this machine and process can run a BPF mesh, and says how to
/// fix what is missing.
///
/// ```swift
/// let report = SystemCheck.run()
/// for finding in report.failures { print(finding) }   // each names its fix
/// try report.requireAll()                              // or throw the first failure
/// ```
public enum SystemCheck {
    /// One checked requirement.
    public struct Finding: Sendable, CustomStringConvertible {
        /// What was checked, such as `CAP_BPF` or `bpffs at /sys/fs/bpf`.
        public var name: String
        /// What was found.
        public var detail: String
        /// Nil when the requirement is met; otherwise the typed error, whose hint is the fix.
        public var error: BPFError?
        /// Whether the requirement is met.
        public var passed: Bool { error == nil }

        public var description: String {
            if let error { return "FAIL \(name): \(detail)\(error.hint.map { " — fix: \($0)" } ?? "")" }
            return "ok   \(name): \(detail)"
        }
    }

    /// The findings of one run.
    public struct Report: Sendable, CustomStringConvertible {
        /// Every finding, in the order checked.
        public var findings: [Finding]
        /// The unmet requirements.
        public var failures: [Finding] { findings.filter { !$0.passed } }
        /// Throws the first unmet requirement's error.
        public func requireAll() throws(BPFError) {
            if let error = failures.first?.error { throw error }
        }
        public var description: String { findings.map(\.description).joined(separator: "\n") }
    }

    /// Runs every check. `bpffsPath` is where pins will live.
    public static func run(bpffsPath: String = "/sys/fs/bpf") -> Report {
        var findings = Capability.required.map(check(_:))
        findings.append(checkBPFFS(at: bpffsPath))
        findings.append(checkCgroupV2())
        findings.append(checkBTF())
        findings.append(checkKernelVersion())
        findings.append(checkJIT())
        return Report(findings: findings)
    }

    /// Checks one capability of the calling thread.
    public static func check(_ capability: Capability) -> Finding {
        if capability.isEffective {
            return Finding(name: capability.name, detail: "effective", error: nil)
        }
        return Finding(
            name: capability.name, detail: "missing: needed to \(capability.purpose)",
            error: BPFError(.missingCapability, operation: "preflight", subject: capability.name, errno: .notPermitted,
                            hint: Capability.missingHint))
    }

    /// Checks that `path` is a mounted bpffs.
    public static func checkBPFFS(at path: String) -> Finding {
        let name = "bpffs at \(path)"
        if isBPFFS(path) { return Finding(name: name, detail: "mounted", error: nil) }
        return Finding(name: name, detail: "not a bpffs mount",
                       error: BPFError(.notMounted, operation: "preflight", subject: name,
                                       hint: "mount -t bpf bpf \(path)   (or call SystemCheck.mountBPFFS(at:))"))
    }

    /// Checks that cgroup v2 is mounted somewhere, hybrid hierarchies included.
    public static func checkCgroupV2() -> Finding {
        do throws(BPFError) {
            let mount = try Cgroup.v2MountPoint()
            return Finding(name: "cgroup v2", detail: "mounted at \(mount)", error: nil)
        } catch {
            return Finding(name: "cgroup v2", detail: "no cgroup2 entry in /proc/mounts", error: error)
        }
    }

    /// Checks that the kernel exposes its BTF (needed for CO-RE and `tp_btf`).
    public static func checkBTF() -> Finding {
        if access("/sys/kernel/btf/vmlinux", R_OK) == 0 {
            return Finding(name: "kernel BTF", detail: "/sys/kernel/btf/vmlinux", error: nil)
        }
        return Finding(name: "kernel BTF", detail: "/sys/kernel/btf/vmlinux is missing",
                       error: BPFError(.notSupportedByKernel, operation: "preflight", subject: "kernel BTF",
                                       hint: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or pass OpenOptions(kernelBTFPath:)"))
    }

    /// The minimum kernel version MeshKernel supports (links for cgroups, ring buffers).
    public static let minimumKernel = (major: 5, minor: 10)

    /// Checks the kernel release.
    public static func checkKernelVersion() -> Finding {
        let release = kernelRelease
        if kernelVersion >= minimumKernel { return Finding(name: "kernel version", detail: release, error: nil) }
        return Finding(name: "kernel version", detail: "\(release) is older than \(minimumKernel.major).\(minimumKernel.minor)",
                       error: BPFError(.notSupportedByKernel, operation: "preflight", subject: "kernel \(release)",
                                       hint: "boot Linux \(minimumKernel.major).\(minimumKernel.minor) or newer"))
    }

    /// Checks that the BPF JIT is on.
    public static func checkJIT() -> Finding {
        let value = (try? readFile("/proc/sys/net/core/bpf_jit_enable")).map { String(decoding: $0, as: UTF8.self) }?
            .split(separator: "\n").first.map(String.init) ?? "?"
        if value == "1" || value == "2" { return Finding(name: "BPF JIT", detail: "enabled", error: nil) }
        return Finding(name: "BPF JIT", detail: "bpf_jit_enable is \(value)",
                       error: BPFError(.notSupportedByKernel, operation: "preflight", subject: "BPF JIT",
                                       hint: "sysctl -w net.core.bpf_jit_enable=1"))
    }

    /// Mounts a bpffs at `path` (creating the directory), as `mount -t bpf bpf PATH` does.
    public static func mountBPFFS(at path: String) throws(BPFError) {
        if isBPFFS(path) { return }
        if mkdir(path, 0o700) != 0, Glibc.errno != EEXIST { throw BPFError.system("mount bpffs", path, errno: .current) }
        guard mount("bpf", path, "bpf", 0, nil) == 0 else { throw BPFError.system("mount bpffs", path, errno: .current) }
    }

    /// Whether `path` is the root of a bpffs mount.
    static func isBPFFS(_ path: String) -> Bool {
        var status = statfs()
        return statfs(path, &status) == 0 && UInt32(truncatingIfNeeded: status.f_type) == 0xCAFE_4A11
    }

    /// Whether tracefs is mounted where libbpf looks for it.
    static var isTracefsMounted: Bool {
        var status = statfs()
        let tracefsMagic: UInt32 = 0x7472_6163
        let candidates: [String] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        return candidates.contains {
            statfs($0, &status) == 0 && UInt32(truncatingIfNeeded: status.f_type) == tracefsMagic
        }
    }

    /// Whether the kernel has kprobes (its perf PMU, or the tracefs interface).
    static var kernelHasKprobes: Bool {
        access("/sys/bus/event_source/devices/kprobe/type", F_OK) == 0
            || access("/sys/kernel/tracing/kprobe_events", F_OK) == 0
            || access("/sys/kernel/debug/tracing/kprobe_events", F_OK) == 0
    }

    /// `uname -r`.
    /// The running kernel's major and minor version (0 for a part that cannot be read).
    package static var kernelVersion: (major: Int, minor: Int) {
        let parts = kernelRelease.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (parts.first ?? 0, parts.count > 1 ? parts[1] : 0)
    }

    static var kernelRelease: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
