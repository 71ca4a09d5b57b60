import CBPFShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An attachment of a program to a hook; the program is detached when the
/// link is closed or released.
///
/// Keep the link for as long as the program should run:
///
/// ```swift
/// let link = try program.attach(to: cgroup)
/// defer { link.close() }   // or let it go out of scope
/// ```
///
/// A pinned link (``pin(at:)``) survives its process; reopen it with
/// ``open(pinned:)`` and call ``unpin(at:)`` to let it detach.
public final class BPFLink: @unchecked Sendable, CustomStringConvertible {
    private enum Handle: @unchecked Sendable {
        /// A libbpf link: kernel links and perf-event based attachments.
        case libbpf(OpaquePointer)
        /// A kernel link file descriptor.
        case descriptor(Int32)
        /// A `BPF_PROG_ATTACH` attachment for kernels without links of this
        /// type; detached with `BPF_PROG_DETACH`.
        case legacy(program: Int32, target: Int32, type: AttachType)
        case closed
    }

    private let handle: Mutex<Handle>
    /// What is attached where, such as `program 'redirect' on map 'sock_hash' (sk_msg_verdict)`.
    public let label: String
    public var description: String { "link: \(label)" }

    init(libbpf link: OpaquePointer, label: String) {
        handle = Mutex(.libbpf(link))
        self.label = label
    }

    init(descriptor: Int32, label: String) {
        handle = Mutex(.descriptor(descriptor))
        self.label = label
    }

    init(legacyProgram program: Int32, target: Int32, type: AttachType, label: String) {
        handle = Mutex(.legacy(program: program, target: target, type: type))
        self.label = label
    }

    deinit { close() }

    /// Detaches the program now (unless the link is pinned). Safe to call twice.
    public func close() {
        let old = handle.withLock { handle in
            let old = handle
            handle = .closed
            return old
        }
        switch old {
        case .libbpf(let link): bpf_link__destroy(link)
        case .descriptor(let fd): closeDescriptor(fd)
        case .legacy(let program, let target, let type):
            _ = bpf_prog_detach2(program, target, type.kernelValue)
            closeDescriptor(program)
            closeDescriptor(target)
        case .closed: break
        }
    }

    /// Whether the link is still open in this process.
    public var isOpen: Bool {
        handle.withLock { if case .closed = $0 { false } else { true } }
    }

    private func descriptor(_ operation: BPFError.Operation) throws(BPFError) -> Int32 {
        let fd: Int32? = handle.withLock { handle in
            switch handle {
            case .libbpf(let link): bpf_link__fd(link)
            case .descriptor(let fd): fd
            case .legacy, .closed: nil
            }
        }
        guard let fd else {
            throw BPFError(.invalidState, operation: operation, subject: label,
                           detail: isOpen ? "this kernel attached the program without a link object (BPF_PROG_ATTACH); it cannot be pinned" : "the link is closed")
        }
        return fd
    }

    /// The kernel's link id (`bpftool link show id N`); nil for attachments without a kernel link.
    public var id: UInt32? {
        guard let fd = try? descriptor("read link info") else { return nil }
        return kernelInfo(of: fd, as: bpf_link_info.self, zero: bpf_link_info())?.id
    }

    /// The id of the attached program, when the link is a kernel link.
    public var programID: UInt32? {
        guard let fd = try? descriptor("read link info") else { return nil }
        return kernelInfo(of: fd, as: bpf_link_info.self, zero: bpf_link_info())?.prog_id
    }

    /// Pins the link at `path` in bpffs: it then stays attached after this
    /// process releases it, until the pin is removed.
    public func pin(at path: String) throws(BPFError) {
        let fd = try descriptor("pin link")
        try LibBPF.check("pin link", "\(label) at \(path)") { bpf_obj_pin(fd, path) }
    }

    /// Pins the link as `name` in a mesh instance's pin folder.
    public func pin(in folder: PinFolder, as name: String) throws(BPFError) {
        try pin(at: folder.path(for: name))
    }

    /// Opens a link pinned at `path`; releasing the result does not detach
    /// it while the pin exists.
    public static func open(pinned path: String) throws(BPFError) -> BPFLink {
        let (fd, info) = try openPinned(path, kind: "link", zero: bpf_link_info())
        return BPFLink(descriptor: fd, label: "pinned link \(path) (id \(info.id), program id \(info.prog_id))")
    }

    /// Removes a pin; once no process holds the link, the program detaches.
    public static func unpin(at path: String) throws(BPFError) {
        guard unlink(path) == 0 else { throw BPFError.system("unpin link", path, errno: .current) }
    }
}
