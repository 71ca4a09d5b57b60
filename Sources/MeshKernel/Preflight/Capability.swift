import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// A Linux capability that MeshKernel's operations need.
public struct Capability: Hashable, Sendable, CustomStringConvertible {
    /// The kernel's capability number (`CAP_*`).
    public let rawValue: Int32
    /// The capability's name, such as `CAP_BPF`.
    public let name: String
    /// What needs it.
    public let purpose: String

    /// `CAP_BPF`: create maps and load programs.
    public static let bpf = Capability(rawValue: 39, name: "CAP_BPF", purpose: "create maps and load BPF programs")
    /// `CAP_NET_ADMIN`: attach networking programs (cgroup, sockmap, tc, xdp).
    public static let netAdmin = Capability(rawValue: 12, name: "CAP_NET_ADMIN", purpose: "attach networking programs")
    /// `CAP_SYS_ADMIN`: cgroups, bpffs mounts, and what CAP_BPF does not cover.
    public static let sysAdmin = Capability(rawValue: 21, name: "CAP_SYS_ADMIN", purpose: "manage cgroups and bpffs, iterate BPF objects")
    /// `CAP_PERFMON`: tracing programs, uprobes and pointer-reading helpers.
    public static let perfmon = Capability(rawValue: 38, name: "CAP_PERFMON", purpose: "attach tracing programs and uprobes")

    /// `CAP_SYS_NICE`: raise a thread's priority (MeshProxy's tenant threads, after a reweighting).
    public static let sysNice = Capability(rawValue: 23, name: "CAP_SYS_NICE", purpose: "raise a tenant thread's priority again")

    /// The capabilities a mesh agent needs.
    public static let required: [Capability] = [.bpf, .netAdmin, .sysAdmin, .perfmon]

    public var description: String { name }

    /// Whether the calling thread has this capability in its effective set (read through libcap).
    public var isEffective: Bool {
        guard let capabilities = cap_get_proc() else { return false }
        defer { cap_free(UnsafeMutableRawPointer(capabilities)) }
        var value = cap_flag_value_t(0)
        guard cap_get_flag(capabilities, cap_value_t(rawValue), CAP_EFFECTIVE, &value) == 0 else { return false }
        return value == CAP_SET
    }

    /// The fix for a process without the capabilities MeshKernel needs.
    static let missingHint = "run as root, or grant the capabilities: setcap cap_bpf,cap_net_admin,cap_sys_admin,cap_perfmon+ep <binary>"
}
