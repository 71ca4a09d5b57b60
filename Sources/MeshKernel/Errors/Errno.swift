#if canImport(Glibc)
import Glibc
#endif

/// A POSIX error number, named the way the kernel names it.
///
/// Wraps the `errno` value a failed system call or libbpf function reported.
/// `description` prints the symbolic name and the C library's text, for
/// example `EPERM (Operation not permitted)`.
public struct Errno: Error, RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The raw error number.
    public let rawValue: Int32

    /// Wraps a raw error number.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    @inlinable
    package static var current: Errno { Errno(rawValue: Glibc.errno) }

    /// Operation not permitted (`EPERM`): usually a missing capability.
    public static let notPermitted = Errno(rawValue: EPERM)
    /// No such file or directory (`ENOENT`): a missing key, pin, or kernel feature.
    public static let noSuchFileOrDirectory = Errno(rawValue: ENOENT)
    /// Interrupted system call (`EINTR`).
    public static let interrupted = Errno(rawValue: EINTR)
    /// Bad file descriptor (`EBADF`).
    public static let badFileDescriptor = Errno(rawValue: EBADF)
    /// Try again (`EAGAIN`).
    public static let tryAgain = Errno(rawValue: EAGAIN)
    /// Out of memory (`ENOMEM`).
    public static let outOfMemory = Errno(rawValue: ENOMEM)
    /// Permission denied (`EACCES`): the verifier's usual rejection.
    public static let permissionDenied = Errno(rawValue: EACCES)
    /// Device or resource busy (`EBUSY`).
    public static let resourceBusy = Errno(rawValue: EBUSY)
    /// File exists (`EEXIST`): a key or pin that is already there.
    public static let fileExists = Errno(rawValue: EEXIST)
    /// Invalid argument (`EINVAL`).
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// Argument list too long (`E2BIG`): a full map, or a too large attribute.
    public static let argumentListTooLong = Errno(rawValue: E2BIG)
    /// No space left on device (`ENOSPC`): a verifier log buffer too small.
    public static let noSpace = Errno(rawValue: ENOSPC)
    /// Operation not supported (`EOPNOTSUPP`).
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    /// The kernel-internal "not supported" (`ENOTSUPP`, 524) that leaks from BPF syscalls.
    public static let kernelNotSupported = Errno(rawValue: 524)
    /// Connection refused (`ECONNREFUSED`).
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    /// Function not implemented (`ENOSYS`).
    public static let notImplemented = Errno(rawValue: ENOSYS)
    /// Not a directory (`ENOTDIR`).
    public static let notADirectory = Errno(rawValue: ENOTDIR)
    /// Exec format error (`ENOEXEC`): libbpf's answer to a malformed ELF file.
    public static let execFormatError = Errno(rawValue: ENOEXEC)
    /// Bad address (`EFAULT`).
    public static let badAddress = Errno(rawValue: EFAULT)
    /// Argument out of domain (`EDOM`).
    public static let outOfDomain = Errno(rawValue: EDOM)
    /// Result too large (`ERANGE`).
    public static let outOfRange = Errno(rawValue: ERANGE)
    /// No such process (`ESRCH`).
    public static let noSuchProcess = Errno(rawValue: ESRCH)
    /// Bad message (`EBADMSG`).
    public static let badMessage = Errno(rawValue: EBADMSG)

    /// The symbolic name, such as `EPERM`, or `errno N` for an unnamed value.
    public var name: String {
        Errno.names[rawValue] ?? "errno \(rawValue)"
    }

    /// The symbolic name followed by the C library's text.
    public var description: String {
        if rawValue == 524 { return "ENOTSUPP (Operation not supported by the kernel)" }
        return "\(name) (\(String(cString: strerror(rawValue))))"
    }

    private static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO",
        ENXIO: "ENXIO", E2BIG: "E2BIG", ENOEXEC: "ENOEXEC", EBADF: "EBADF", EAGAIN: "EAGAIN",
        ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST",
        ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE",
        EMFILE: "EMFILE", ENOSPC: "ENOSPC", EROFS: "EROFS", EDOM: "EDOM", ERANGE: "ERANGE",
        ENOSYS: "ENOSYS", ENOTEMPTY: "ENOTEMPTY", ELOOP: "ELOOP", EBADMSG: "EBADMSG",
        EOPNOTSUPP: "EOPNOTSUPP", EAFNOSUPPORT: "EAFNOSUPPORT", EADDRINUSE: "EADDRINUSE",
        ECONNREFUSED: "ECONNREFUSED", ECONNRESET: "ECONNRESET", ETIMEDOUT: "ETIMEDOUT",
        EPROTO: "EPROTO", ENOTSOCK: "ENOTSOCK", EPROTONOSUPPORT: "EPROTONOSUPPORT",
        ENOTCONN: "ENOTCONN", 524: "ENOTSUPP",
    ]
}
