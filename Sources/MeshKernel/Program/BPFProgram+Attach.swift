import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

extension BPFProgram {
    /// Attaches a cgroup program (`sockops`, `cgroup/connect4|6`,
    /// `cgroup/sendmsg4|6`, `cgroup/recvmsg4|6`, `cgroup/getpeername4|6`,
    /// `cgroup/getsockopt`, `cgroup/sock_create`, `cgroup_skb/ingress|egress`)
    /// to a cgroup v2 directory through a kernel link.
    public func attach(to cgroup: Cgroup) throws(BPFError) -> BPFLink {
        let attachType = expectedAttachType
        guard attachType.attachesToCgroup else {
            throw wrongAttach("a cgroup", "cgroup programs (sockops, cgroup/..., cgroup_skb/...)")
        }
        _ = try descriptor()
        let directory = try cgroup.openDirectory()
        defer { closeDescriptor(directory) }
        let link = try LibBPF.pointer("attach", "\(description) to cgroup \(cgroup.path)") {
            bpf_program__attach_cgroup(handle, directory)
        }
        return BPFLink(libbpf: link, label: "\(description) on cgroup \(cgroup.path) (\(attachType))")
    }

    /// Attaches an `sk_msg` or `sk_skb` verdict/parser program to a sockmap
    /// or sockhash.
    ///
    /// Uses a kernel link (`BPF_LINK_CREATE`, Linux 6.10 and later), so the
    /// program detaches when the link is released and the link can be pinned;
    /// on older kernels it falls back to `BPF_PROG_ATTACH`, and the returned
    /// link detaches with `BPF_PROG_DETACH` just the same.
    public func attach(toSockMap map: BPFMap) throws(BPFError) -> BPFLink {
        let attachType = expectedAttachType
        guard attachType.attachesToSockMap else {
            throw wrongAttach("a sockmap", "sk_msg and sk_skb programs")
        }
        guard map.type == .sockMap || map.type == .sockHash else {
            throw BPFError(.invalidArgument, operation: "attach", subject: description, detail: "\(map) is a \(map.type), not a sockmap or sockhash")
        }
        let programFD = try descriptor()
        let mapFD = try map.descriptor()
        let label = "\(description) on \(map) (\(attachType))"
        let linkFD = cbpf_link_create(programFD, mapFD, attachType.kernelValue)
        if linkFD >= 0 {
            return BPFLink(descriptor: linkFD, label: label)
        }
        let linkErrno = Errno.current
        guard linkErrno == .invalidArgument || linkErrno == .notSupported || linkErrno == .kernelNotSupported else {
            throw BPFError.system("attach", label, errno: linkErrno)
        }
        // Kernels before 6.10 have no sockmap links: attach the old way and
        // keep our own references to program and map so detaching still works.
        let programCopy = dup(programFD), mapCopy = dup(mapFD)
        guard programCopy >= 0, mapCopy >= 0 else {
            let errno = Errno.current
            closeDescriptor(programCopy)
            closeDescriptor(mapCopy)
            throw BPFError.system("attach", label, errno: errno, detail: "could not keep the descriptors needed to detach later")
        }
        do {
            try LibBPF.check("attach", label) { bpf_prog_attach(programFD, mapFD, attachType.kernelValue, 0) }
        } catch {
            closeDescriptor(programCopy)
            closeDescriptor(mapCopy)
            throw error
        }
        return BPFLink(legacyProgram: programCopy, target: mapCopy, type: attachType, label: label)
    }

    /// Attaches a `raw_tp` program to a raw tracepoint; `name` defaults to
    /// the one in the section name (`raw_tp/sys_enter`).
    public func attachRawTracepoint(_ name: String? = nil) throws(BPFError) -> BPFLink {
        guard type == .rawTracepoint else { throw wrongAttach("a raw tracepoint", "raw_tp programs") }
        let point = name ?? String(sectionName.split(separator: "/").last ?? "")
        _ = try descriptor()
        let link = try LibBPF.pointer("attach", "\(description) to raw tracepoint \(point)") {
            bpf_program__attach_raw_tracepoint(handle, point)
        }
        return BPFLink(libbpf: link, label: "\(description) on raw tracepoint \(point)")
    }

    /// Attaches a `tp_btf` program to the BTF-typed tracepoint named in its section.
    public func attachBTFTracepoint() throws(BPFError) -> BPFLink {
        guard type == .tracing, expectedAttachType == .traceRawTracepoint else {
            throw wrongAttach("a BTF tracepoint", "tp_btf programs")
        }
        _ = try descriptor()
        let link = try LibBPF.pointer("attach", "\(description) to \(sectionName)") { bpf_program__attach_trace(handle) }
        return BPFLink(libbpf: link, label: "\(description) on \(sectionName)")
    }

    /// Attaches a `tracepoint` program to `category:name` (needs tracefs).
    public func attachTracepoint(category: String, name: String) throws(BPFError) -> BPFLink {
        guard type == .tracepoint else { throw wrongAttach("a tracepoint", "tracepoint programs") }
        _ = try descriptor()
        do throws(BPFError) {
            let link = try LibBPF.pointer("attach", "\(description) to tracepoint \(category):\(name)") {
                bpf_program__attach_tracepoint(handle, category, name)
            }
            return BPFLink(libbpf: link, label: "\(description) on tracepoint \(category):\(name)")
        } catch where error.errno == .noSuchFileOrDirectory && !SystemCheck.isTracefsMounted {
            throw BPFError(.notMounted, operation: "attach", subject: "\(description) to tracepoint \(category):\(name)",
                           errno: error.errno, hint: "mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing", detail: error.detail)
        }
    }

    /// Attaches a uprobe (or, with `returnProbe`, a uretprobe) to `function`
    /// in the ELF file `binary` (an executable or shared library), for
    /// process `pid` or, when nil, for every process.
    public func attachUprobe(binary: String, function: String, returnProbe: Bool = false, pid: pid_t? = nil) throws(BPFError) -> BPFLink {
        guard type == .kprobe else { throw wrongAttach("a uprobe", "uprobe/uretprobe programs") }
        _ = try descriptor()
        let kind = returnProbe ? "uretprobe" : "uprobe"
        let link = try LibBPF.pointer("attach", "\(description) as \(kind) on \(binary):\(function)") {
            cbpf_attach_uprobe(handle, pid ?? -1, binary, function, 0, returnProbe)
        }
        return BPFLink(libbpf: link, label: "\(description) as \(kind) on \(binary):\(function)")
    }

    /// Attaches a kprobe (or, with `returnProbe`, a kretprobe) to a kernel function.
    ///
    /// On a kernel built without `CONFIG_KPROBES` this fails with
    /// ``BPFError/Code/notSupportedByKernel``.
    public func attachKprobe(function: String, returnProbe: Bool = false) throws(BPFError) -> BPFLink {
        guard type == .kprobe else { throw wrongAttach("a kprobe", "kprobe/kretprobe programs") }
        _ = try descriptor()
        let kind = returnProbe ? "kretprobe" : "kprobe"
        let subject = "\(description) as \(kind) on \(function)"
        guard SystemCheck.kernelHasKprobes else {
            throw BPFError(.notSupportedByKernel, operation: "attach", subject: subject, errno: .noSuchFileOrDirectory,
                           hint: "this kernel is built without CONFIG_KPROBES; use a tp_btf or raw_tp program on a nearby tracepoint")
        }
        let link = try LibBPF.pointer("attach", subject) { cbpf_attach_kprobe(handle, function, returnProbe) }
        return BPFLink(libbpf: link, label: subject)
    }

    private func wrongAttach(_ target: String, _ supported: String) -> BPFError {
        BPFError(.invalidArgument, operation: "attach", subject: description,
                 detail: "only \(supported) attach to \(target); this is a \(type) program (section '\(sectionName)', attach type \(expectedAttachType))")
    }
}
