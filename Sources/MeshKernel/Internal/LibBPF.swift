import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// The single path through which MeshKernel calls libbpf and the bpf(2)
/// syscall wrappers: capture libbpf's messages on this thread, turn a failure
/// into a ``BPFError`` that carries them.
enum LibBPF {
    /// Runs `body` while capturing what libbpf prints on this thread.
    static func capturingLog<T>(_ body: () throws -> T) rethrows -> (result: T, log: String?) {
        cbpf_log_capture_begin()
        let result: T
        do {
            result = try body()
        } catch {
            _ = takeCapturedLog()
            throw error
        }
        return (result, takeCapturedLog())
    }

    private static func takeCapturedLog() -> String? {
        guard let raw = cbpf_log_capture_end() else { return nil }
        defer { free(raw) }
        return String(cString: raw)
    }

    /// Calls a libbpf function that returns a non-negative value or a
    /// negative error (setting `errno`), and converts a failure.
    @discardableResult
    static func check(
        _ operation: BPFError.Operation, _ subject: @autoclosure () -> String?,
        _ body: () -> Int32
    ) throws(BPFError) -> Int32 {
        let (value, log) = capturingLog(body)
        if value >= 0 { return value }
        let errno = Errno(rawValue: value == -1 ? Glibc.errno : -value)
        throw BPFError.system(operation, subject(), errno: errno, detail: log.map(trimmed))
    }

    /// Calls a libbpf function that returns a pointer or NULL (setting `errno`).
    static func pointer(
        _ operation: BPFError.Operation, _ subject: @autoclosure () -> String?,
        _ body: () -> OpaquePointer?
    ) throws(BPFError) -> OpaquePointer {
        let saved = Glibc.errno
        Glibc.errno = 0
        let (value, log) = capturingLog(body)
        if let value {
            Glibc.errno = saved
            return value
        }
        let errno = Errno(rawValue: Glibc.errno == 0 ? EINVAL : Glibc.errno)
        throw BPFError.system(operation, subject(), errno: errno, detail: log.map(trimmed))
    }

    /// libbpf's messages without the trailing newline.
    static func trimmed(_ log: String) -> String {
        var text = Substring(log)
        while text.last == "\n" { text = text.dropLast() }
        return String(text)
    }
}

/// A raw bpf(2)-level call (no libbpf messages): `0`/fd on success, `-1` and `errno` on failure.
@inline(__always)
func syscallResult(_ value: Int32) -> Result<Int32, Errno> {
    value >= 0 ? .success(value) : .failure(Errno(rawValue: value == -1 ? Glibc.errno : -value))
}

/// Closes a file descriptor, retrying never (Linux closes even on EINTR).
@inline(__always)
func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// A C string field of a libbpf struct, read as Swift text.
func string(_ pointer: UnsafePointer<CChar>?) -> String {
    pointer.map { String(cString: $0) } ?? ""
}

/// The kernel's `bpf_*_info` for an fd (`BPF_OBJ_GET_INFO_BY_FD`), or nil.
func kernelInfo<Info>(of fd: Int32, as type: Info.Type, zero: Info) -> Info? {
    var info = zero
    var length = UInt32(MemoryLayout<Info>.size)
    let status = withUnsafeMutableBytes(of: &info) { bpf_obj_get_info_by_fd(fd, $0.baseAddress, &length) }
    return status == 0 ? info : nil
}

/// Opens a pinned BPF object and reads its info; fails (closing the fd) when
/// the pin is not of the expected kind.
func openPinned<Info>(_ path: String, kind: String, zero: Info) throws(BPFError) -> (fd: Int32, info: Info) {
    let operation = BPFError.Operation(stringLiteral: "open pinned \(kind)")
    let fd = try LibBPF.check(operation, path) { bpf_obj_get(path) }
    // Every BPF fd answers BPF_OBJ_GET_INFO_BY_FD; the fd's inode says what it is.
    let expected = kind == "map" ? "anon_inode:bpf-map" : "anon_inode:bpf-link"
    let actual = descriptorTarget(fd)
    guard actual == expected, let info = kernelInfo(of: fd, as: Info.self, zero: zero) else {
        closeDescriptor(fd)
        throw BPFError(.invalidArgument, operation: operation, subject: path,
                       detail: "the pin is not a \(kind) (it is \(actual ?? "unknown"))")
    }
    return (fd, info)
}

/// What a file descriptor refers to, as `/proc/self/fd/N` names it (such as `anon_inode:bpf-map`).
func descriptorTarget(_ fd: Int32) -> String? {
    var buffer = [CChar](repeating: 0, count: 256)
    let count = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
    guard count > 0 else { return nil }
    return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
