/// A BPF object file compiled at build time and embedded in a Swift module.
///
/// `BPF2SwiftPlugin` compiles every `bpf/<Target>/*.bpf.c` of a package and
/// adds one static property per object to this type, so a target opens its
/// programs without any file on disk and without clang at run time:
///
/// ```swift
/// let object = try BPFObject.open(.sockRedirect)
/// ```
public struct EmbeddedBPFObject: Sendable {
    /// The object's name: its source file name without `.bpf.c`.
    public let name: String
    private let base64: String

    /// Wraps an object file carried as base64 text; used by generated code.
    public init(name: String, base64: String) {
        self.name = name
        self.base64 = base64
    }

    /// The object file's bytes; empty if the embedded text is not base64
    /// (``BPFObject/open(_:options:)`` reports that case as such).
    public var bytes: [UInt8] {
        decodeBase64(base64) ?? []
    }

    /// The bytes, or the reason they cannot be had.
    func decodedBytes() throws(BPFError) -> [UInt8] {
        guard let bytes = decodeBase64(base64) else {
            throw BPFError(.invalidObject, operation: "open object", subject: "'\(name)'",
                           hint: "rebuild the package so BPF2SwiftPlugin regenerates the embedded object",
                           detail: "the embedded object is not valid base64")
        }
        return bytes
    }
}
