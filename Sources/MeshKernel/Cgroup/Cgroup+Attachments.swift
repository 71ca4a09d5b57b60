import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

extension Cgroup {
    /// The ids of the programs attached to this cgroup for `type`, as the
    /// kernel reports them (`BPF_PROG_QUERY`; what `bpftool cgroup show` prints).
    public func attachedProgramIDs(_ type: AttachType) throws(BPFError) -> [UInt32] {
        let directory = try openDirectory()
        defer { closeDescriptor(directory) }
        var ids = [UInt32](repeating: 0, count: 64)
        var count = UInt32(ids.count)
        var flags: UInt32 = 0
        try LibBPF.check("query attached programs", "\(path) (\(type))") {
            bpf_prog_query(directory, type.kernelValue, 0, &flags, &ids, &count)
        }
        return Array(ids.prefix(Int(count)))
    }
}

/// Whether kernel objects still exist, by id — for checking from the
/// kernel's side that a release really freed or detached something (the
/// kernel frees programs and maps asynchronously, so poll).
public enum KernelObjects {
    /// Whether a program with this id is loaded.
    public static func programExists(id: UInt32) -> Bool { exists(bpf_prog_get_fd_by_id(id)) }
    /// Whether a map with this id exists.
    public static func mapExists(id: UInt32) -> Bool { exists(bpf_map_get_fd_by_id(id)) }
    /// Whether a link with this id exists.
    public static func linkExists(id: UInt32) -> Bool { exists(bpf_link_get_fd_by_id(id)) }

    private static func exists(_ fd: Int32) -> Bool {
        guard fd >= 0 else { return Glibc.errno != ENOENT }
        closeDescriptor(fd)
        return true
    }
}
