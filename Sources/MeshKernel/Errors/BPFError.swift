/// The one error type of MeshKernel.
///
/// Every failure names what was being done (``operation``), to what
/// (``subject``: an object, program, map, pin or path), the kernel's answer
/// (``errno``, as a named ``Errno``), and a ``hint`` with the one-line fix when
/// there is one. A program the verifier rejected carries the verifier's whole
/// log in ``verifierLog``. Match on ``code`` to handle a kind of failure:
///
/// ```swift
/// do { try flows.insert(value, for: key, mode: .noExist) }
/// catch let error as BPFError where error.code == .mapFull { shed(key) }
/// ```
public struct BPFError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure; stable for matching.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        public var description: String { raw }

        /// A system call or libbpf call failed; see ``BPFError/errno``.
        public static let systemCall = Code("system call failed")
        /// The file or bytes are not a valid BPF ELF object.
        public static let invalidObject = Code("invalid object")
        /// The verifier rejected a program; see ``BPFError/verifierLog``.
        public static let verifierRejected = Code("verifier rejected program")
        /// The object has no program or map of that name.
        public static let notFound = Code("not found")
        /// A Swift key or value type does not match the map's definition.
        public static let sizeMismatch = Code("size mismatch")
        /// The map is full (`E2BIG`).
        public static let mapFull = Code("map full")
        /// The key is not in the map.
        public static let keyNotFound = Code("key not found")
        /// The key is already in the map and `noExist` was requested.
        public static let keyExists = Code("key exists")
        /// This kernel cannot do what was asked (a missing feature or config option).
        public static let notSupportedByKernel = Code("not supported by this kernel")
        /// The process lacks a capability.
        public static let missingCapability = Code("missing capability")
        /// A required filesystem (bpffs, cgroup2, tracefs) is not mounted.
        public static let notMounted = Code("not mounted")
        /// An existing pin does not match what the object defines.
        public static let pinIncompatible = Code("incompatible pin")
        /// A pin exists and the policy forbids reusing or replacing it.
        public static let pinExists = Code("pin exists")
        /// The call is not valid in the object's current state (such as editing after load).
        public static let invalidState = Code("invalid state")
        /// An argument is out of range or malformed.
        public static let invalidArgument = Code("invalid argument")
    }

    /// What MeshKernel was doing, such as `load object` or `attach program`.
    public struct Operation: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
        /// The operation's name.
        public let description: String
        /// Names an operation.
        public init(stringLiteral value: String) { self.description = value }
    }

    /// The kind of failure.
    public var code: Code
    /// What was being done.
    public var operation: Operation
    /// What it was done to, such as `program 'count_connects'` or a path.
    public var subject: String?
    /// The kernel's or libbpf's error number, when there was one.
    public var errno: Errno?
    /// The one-line fix, when MeshKernel knows it.
    public var hint: String?
    /// The verifier's complete log for a rejected program.
    public var verifierLog: String?
    /// Further detail: libbpf's own messages, or the field that did not match.
    public var detail: String?

    /// Creates an error; MeshKernel's own code uses the specific factories.
    public init(
        _ code: Code, operation: Operation, subject: String? = nil, errno: Errno? = nil,
        hint: String? = nil, verifierLog: String? = nil, detail: String? = nil
    ) {
        self.code = code
        self.operation = operation
        self.subject = subject
        self.errno = errno
        self.hint = hint
        self.verifierLog = verifierLog
        self.detail = detail
    }

    public var description: String {
        var text = "\(operation)"
        if let subject { text += " \(subject)" }
        text += " failed: \(code)"
        if let errno { text += ", \(errno)" }
        if let detail, !detail.isEmpty { text += "\n\(detail)" }
        if let hint { text += "\nhint: \(hint)" }
        if let verifierLog, !verifierLog.isEmpty { text += "\n-- verifier log --\n\(verifierLog)" }
        return text
    }
}

extension BPFError {
    /// The error for a failed system call, with the hint that fits its errno.
    @usableFromInline
    static func system(
        _ operation: Operation, _ subject: String?, errno: Errno, detail: String? = nil
    ) -> BPFError {
        switch errno {
        case .notPermitted where !(Capability.bpf.isEffective && Capability.sysAdmin.isEffective):
            return BPFError(
                .missingCapability, operation: operation, subject: subject, errno: errno,
                hint: Capability.missingHint, detail: detail)
        case .notPermitted:
            return BPFError(
                .systemCall, operation: operation, subject: subject, errno: errno,
                hint: "the process has its capabilities, so the kernel refused for another reason: a frozen or read-only map, or lockdown",
                detail: detail)
        case .kernelNotSupported, .notSupported:
            return BPFError(
                .notSupportedByKernel, operation: operation, subject: subject, errno: errno,
                hint: "this kernel does not support the operation; check `bpftool feature probe`",
                detail: detail)
        default:
            return BPFError(.systemCall, operation: operation, subject: subject, errno: errno, detail: detail)
        }
    }
}
