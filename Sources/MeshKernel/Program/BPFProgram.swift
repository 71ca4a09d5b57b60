import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// A program of a ``BPFObject``: inspect and adjust it before load, attach it after.
///
/// Every `attach` method returns a ``BPFLink`` that detaches the program when
/// it is closed or released.
public final class BPFProgram: @unchecked Sendable, CustomStringConvertible {
    let object: BPFObject
    let handle: OpaquePointer
    /// The program's name: its C function name.
    public let name: String
    /// The ELF section it came from, such as `sockops` or `cgroup/connect4`.
    public let sectionName: String

    init(object: BPFObject, handle: OpaquePointer) {
        self.object = object
        self.handle = handle
        self.name = string(bpf_program__name(handle))
        self.sectionName = string(bpf_program__section_name(handle))
    }

    public var description: String { "program '\(name)'" }

    /// The program's type, from its section name.
    public var type: ProgramType { ProgramType(bpf_program__type(handle)) }

    /// The attach type the kernel expects, from its section name.
    public var expectedAttachType: AttachType { AttachType(bpf_program__expected_attach_type(handle)) }

    /// The number of BPF instructions (before load: as compiled).
    public var instructionCount: Int { Int(bpf_program__insn_cnt(handle)) }

    /// Whether ``BPFObject/load()`` loads this program.
    public var isAutoloaded: Bool { bpf_program__autoload(handle) }

    /// Chooses whether ``BPFObject/load()`` loads this program; only before load.
    public func setAutoload(_ autoload: Bool) throws(BPFError) {
        _ = try object.withUnloaded("set autoload", description) { () throws(BPFError) in
            try LibBPF.check("set autoload", description) { bpf_program__set_autoload(handle, autoload) }
        }
    }

    /// The program's file descriptor; the object must be loaded.
    public func descriptor() throws(BPFError) -> Int32 {
        try object.requireLoaded("use program", description)
        let fd = bpf_program__fd(handle)
        guard fd >= 0 else {
            throw BPFError(.invalidState, operation: "use program", subject: description, detail: "the program was not loaded (autoload off?)")
        }
        return fd
    }

    /// The program's kernel id, which `bpftool prog show id N` accepts.
    public var id: UInt32? {
        guard let fd = try? descriptor() else { return nil }
        return kernelInfo(of: fd, as: bpf_prog_info.self, zero: bpf_prog_info())?.id
    }

    /// Runs the program once with `context` through `BPF_PROG_TEST_RUN`
    /// (for `syscall` and `raw_tp` programs) and returns its return value.
    @discardableResult
    public func testRun(context: inout some BitwiseCopyable) throws(BPFError) -> UInt32 {
        let fd = try descriptor()
        var value: UInt32 = 0
        let size = UInt32(MemoryLayout.size(ofValue: context))
        _ = try withUnsafeMutableBytes(of: &context) { (bytes) throws(BPFError) in
            try LibBPF.check("test run", description) { cbpf_prog_test_run(fd, bytes.baseAddress, size, &value) }
        }
        return value
    }

    /// Runs the program once without a context.
    @discardableResult
    public func testRun() throws(BPFError) -> UInt32 {
        let fd = try descriptor()
        var value: UInt32 = 0
        try LibBPF.check("test run", description) { cbpf_prog_test_run(fd, nil, 0, &value) }
        return value
    }
}
