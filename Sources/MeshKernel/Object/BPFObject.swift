import BPFObjectFile
import CBPFShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A BPF ELF object: its programs and maps, first as specifications you can
/// inspect and adjust, then, after ``load()``, as kernel objects.
///
/// ```swift
/// let object = try BPFObject.open(.sockRedirect)
/// try object.map("sock_hash").setMaxEntries(65_536)
/// try object.load()                       // verifier errors carry the whole log
/// let link = try object.program("redirect").attach(toSockMap: object.map("sock_hash"))
/// ```
///
/// Each ``BPFProgram`` and ``BPFMap`` keeps its object alive;
/// the kernel objects are released as soon as the last of them is released.
/// Links made from its programs are independent: each detaches when released.
public final class BPFObject: @unchecked Sendable {
    /// The object's name (from the file name, or given when opening bytes).
    public let name: String

    let handle: OpaquePointer
    /// libbpf reads the ELF image in place until the object is loaded.
    private let image: UnsafeMutableRawBufferPointer
    private let loaded = Mutex(false)

    /// The programs in the order the object defines them.
    public var programs: [BPFProgram] {
        var programs: [BPFProgram] = []
        var program = bpf_object__next_program(handle, nil)
        while let current = program {
            programs.append(BPFProgram(object: self, handle: current))
            program = bpf_object__next_program(handle, current)
        }
        return programs
    }

    /// The maps in the order the object defines them, including the
    /// `.rodata`, `.data` and `.bss` maps that hold global variables.
    public var maps: [BPFMap] {
        var maps: [BPFMap] = []
        var map = bpf_object__next_map(handle, nil)
        while let current = map {
            maps.append(BPFMap(object: self, handle: current))
            map = bpf_object__next_map(handle, current)
        }
        return maps
    }

    /// Options for opening an object.
    public struct OpenOptions: Sendable {
        /// A BTF file describing the running kernel, for CO-RE relocations on
        /// a kernel without `/sys/kernel/btf/vmlinux`; nil uses the kernel's own.
        public var kernelBTFPath: String?
        /// Creates default options.
        public init(kernelBTFPath: String? = nil) { self.kernelBTFPath = kernelBTFPath }
    }

    private init(name: String, image: UnsafeMutableRawBufferPointer, options: OpenOptions) throws(BPFError) {
        self.name = name
        self.image = image
        do {
            _ = try ELFImage.validate(UnsafeRawBufferPointer(image))
        } catch {
            image.deallocate()
            throw BPFError(
                .invalidObject, operation: "open object", subject: "'\(name)'", errno: .execFormatError,
                hint: "the file is truncated or corrupted; rebuild it with clang -target bpf -g", detail: error.reason)
        }
        let opened: OpaquePointer?
        let (result, log) = LibBPF.capturingLog { () -> (OpaquePointer?, Int32) in
            Glibc.errno = 0
            let object = cbpf_object_open_mem(image.baseAddress, image.count, name, options.kernelBTFPath)
            return (object, Glibc.errno)
        }
        opened = result.0
        guard let opened else {
            image.deallocate()
            let errno = Errno(rawValue: result.1 == 0 ? EINVAL : result.1)
            throw BPFError(
                .invalidObject, operation: "open object", subject: "'\(name)'", errno: errno,
                hint: "the bytes are not a BPF object libbpf can read; rebuild it with clang -target bpf -g",
                detail: log.map(LibBPF.trimmed))
        }
        self.handle = opened
    }

    deinit {
        bpf_object__close(handle)
        image.deallocate()
    }

    /// Opens an object from its bytes; nothing touches the kernel yet.
    ///
    /// The bytes are checked as an ELF image before libbpf parses them, so a
    /// truncated or corrupted file is an ``BPFError/Code/invalidObject`` error.
    public static func open(
        bytes: some Collection<UInt8>, name: String, options: OpenOptions = OpenOptions()
    ) throws(BPFError) -> BPFObject {
        let image = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        _ = image.initializeMemory(as: UInt8.self, from: bytes)
        let exact = UnsafeMutableRawBufferPointer(rebasing: image[0..<bytes.count])
        return try BPFObject(name: name, image: exact, options: options)
    }

    /// Opens an object file from disk.
    public static func open(file path: String, options: OpenOptions = OpenOptions()) throws(BPFError) -> BPFObject {
        let bytes = try readFile(path)
        var name = Substring(path.split(separator: "/").last ?? Substring(path))
        for suffix in [".o", ".bpf"] where name.hasSuffix(suffix) { name = name.dropLast(suffix.count) }
        return try open(bytes: bytes, name: String(name), options: options)
    }

    /// Opens an object embedded at build time by `BPF2SwiftPlugin`.
    public static func open(_ embedded: EmbeddedBPFObject, options: OpenOptions = OpenOptions()) throws(BPFError) -> BPFObject {
        try open(bytes: embedded.decodedBytes(), name: embedded.name, options: options)
    }

    /// The program with this (C function) name.
    public func program(_ name: String) throws(BPFError) -> BPFProgram {
        guard let program = bpf_object__find_program_by_name(handle, name) else {
            throw BPFError(
                .notFound, operation: "find program", subject: "'\(name)' in object '\(self.name)'",
                detail: "programs: \(programs.map(\.name).joined(separator: ", "))")
        }
        return BPFProgram(object: self, handle: program)
    }

    /// The map with this name (`.rodata`-style maps are named `<object>.rodata`).
    public func map(_ name: String) throws(BPFError) -> BPFMap {
        guard let map = bpf_object__find_map_by_name(handle, name) else {
            throw BPFError(
                .notFound, operation: "find map", subject: "'\(name)' in object '\(self.name)'",
                detail: "maps: \(maps.map(\.name).joined(separator: ", "))")
        }
        return BPFMap(object: self, handle: map)
    }

    /// Whether ``load()`` has succeeded.
    public var isLoaded: Bool { loaded.withLock { $0 } }

    /// Creates the maps and loads the programs into the kernel.
    ///
    /// A program the verifier rejects fails with
    /// ``BPFError/Code/verifierRejected``, naming the program and carrying the
    /// verifier's complete log; nothing stays loaded after a failure.
    public func load() throws(BPFError) {
        try loaded.withLock { (isLoaded: inout Bool) throws(BPFError) in
            guard !isLoaded else {
                throw BPFError(.invalidState, operation: "load object", subject: "'\(name)'", detail: "already loaded")
            }
            let (result, log) = LibBPF.capturingLog { () -> Int32 in
                bpf_object__load(handle) == 0 ? 0 : Glibc.errno
            }
            if result != 0 {
                throw loadError(errno: Errno(rawValue: result), log: log ?? "")
            }
            isLoaded = true
        }
    }

    /// Runs `body` with the object's state locked against a concurrent load.
    @discardableResult
    func withUnloaded<T>(
        _ operation: BPFError.Operation, _ subject: String, _ body: () throws(BPFError) -> T
    ) throws(BPFError) -> T {
        try loaded.withLock { (isLoaded: inout Bool) throws(BPFError) -> T in
            guard !isLoaded else {
                throw BPFError(
                    .invalidState, operation: operation, subject: subject,
                    hint: "change an object's definitions before calling load()")
            }
            return try body()
        }
    }

    /// Throws unless the object is loaded.
    func requireLoaded(_ operation: BPFError.Operation, _ subject: String) throws(BPFError) {
        guard isLoaded else {
            throw BPFError(.invalidState, operation: operation, subject: subject, hint: "call load() on object '\(name)' first")
        }
    }

    /// Builds the load error from libbpf's captured messages: the failing
    /// program's name and the verifier log libbpf printed between its
    /// BEGIN/END PROG LOAD LOG markers (libbpf grows its buffer until the log
    /// fits, so the log is complete).
    private func loadError(errno: Errno, log: String) -> BPFError {
        let begin = "': -- BEGIN PROG LOAD LOG --\n"
        let end = "-- END PROG LOAD LOG --"
        var program: String?
        var verifierLog: String?
        if let beginRange = log.firstRange(of: begin) {
            let prefix = log[..<beginRange.lowerBound]
            if let quote = prefix.ranges(of: "prog '").last {
                program = String(prefix[quote.upperBound...])
            }
            let rest = log[beginRange.upperBound...]
            verifierLog = String(rest.firstRange(of: end).map { rest[..<$0.lowerBound] } ?? rest)
        } else if let failure = log.firstRange(of: "': BPF program load failed") {
            let prefix = log[..<failure.lowerBound]
            if let quote = prefix.ranges(of: "prog '").last {
                program = String(prefix[quote.upperBound...])
            }
        }
        let summary = log.split(separator: "\n").filter { !$0.contains("BEGIN PROG LOAD LOG") }
        if let program {
            let rejected = verifierLog != nil && (errno == .permissionDenied || errno == .invalidArgument || errno == .noSpace || errno == .argumentListTooLong)
            if rejected || errno != .notPermitted {
                return BPFError(
                    rejected ? .verifierRejected : .systemCall, operation: "load program",
                    subject: "'\(program)' of object '\(name)'", errno: errno,
                    hint: rejected ? "the verifier's log below ends at the instruction it refused" : nil,
                    verifierLog: verifierLog,
                    detail: summary.prefix(4).joined(separator: "\n"))
            }
        }
        var error = BPFError.system("load object", "'\(name)'", errno: errno, detail: LibBPF.trimmed(log))
        error.verifierLog = verifierLog
        return error
    }
}

/// Reads a whole file, with a typed error naming it.
package func readFile(_ path: String) throws(BPFError) -> [UInt8] {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw BPFError.system("read file", path, errno: .current) }
    defer { closeDescriptor(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if Glibc.errno == EINTR { continue }
            throw BPFError.system("read file", path, errno: .current)
        }
        if count == 0 { return bytes }
        bytes.append(contentsOf: chunk[0..<count])
    }
}
