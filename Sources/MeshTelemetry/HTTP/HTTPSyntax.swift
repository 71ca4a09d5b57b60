/// The HTTP/1 syntax rules the package's two head readers share — the
/// telemetry parser (``HTTPHeadParser``) and MeshProxy's strict wire parser — so that both read a
/// token, a field name, a version and a `Content-Length` alike.
///
/// Public and `@inlinable` so that callers in other modules get it
/// specialized and inlined: at `package` access, Swift 6.3 called the
/// unspecialized generic functions from MeshProxy, which cost its HTTP mode a
/// fifth of its CPU per request.
public enum HTTPSyntax {
    /// Whether `byte` is a tchar (RFC 9110, section 5.6.2): letters, digits and ``!#$%&'*+-.^_`|~``.
    @inlinable
    public static func isTokenByte(_ byte: UInt8) -> Bool {
        // A bit per ASCII byte (tchars are all ASCII): no table, no lazy global, a shift and a test.
        switch byte {
        case 0..<64: tokenBitsBelow64 & (1 << UInt64(byte)) != 0
        case 64..<128: tokenBitsFrom64 & (1 << UInt64(byte - 64)) != 0
        default: false
        }
    }

    /// The tchars among bytes 0–63 (`!#$%&'*+-.` and the digits), a bit each.
    @usableFromInline
    static let tokenBitsBelow64: UInt64 = 0x03ff_6cfa_0000_0000
    /// The tchars among bytes 64–127 (the letters and ``^_`|~``), bit `byte - 64` each.
    @usableFromInline
    static let tokenBitsFrom64: UInt64 = 0x57ff_ffff_c7ff_fffe

    /// `byte` with an ASCII capital letter made small; any other byte as it is.
    @inlinable
    public static func asciiLowercase(_ byte: UInt8) -> UInt8 {
        byte | (byte >= 0x41 && byte <= 0x5A ? 0x20 : 0)
    }

    /// Whether two byte strings are equal but for the case of ASCII letters
    /// (how header names and host names compare, RFC 4343): no other character is folded.
    @inlinable
    public static func equalsIgnoringASCIICase(_ one: some Collection<UInt8>, _ other: some Collection<UInt8>) -> Bool {
        guard one.count == other.count else { return false }
        // An explicit iterator: `zip` was not inlined, and its iterator showed in profiles.
        var others = other.makeIterator()
        for byte in one {
            guard let otherByte = others.next(), asciiLowercase(byte) == asciiLowercase(otherByte) else { return false }
        }
        return true
    }

    /// Whether `bytes` spell `lowercase` (an ASCII name given in lowercase), ignoring the case of their letters only.
    @inlinable
    public static func equalsIgnoringCase(_ bytes: some Collection<UInt8>, _ lowercase: String) -> Bool {
        equalsIgnoringASCIICase(bytes, lowercase.utf8)
    }

    /// The same for a name known when the program is built: compared with its
    /// bytes in memory, without a string's UTF-8 view (which cost hundreds of
    /// instructions for a header name).
    @inlinable
    public static func equalsIgnoringCase(_ bytes: some Collection<UInt8>, _ lowercase: StaticString) -> Bool {
        lowercase.withUTF8Buffer { equalsIgnoringASCIICase(bytes, $0) }
    }

    /// The minor version an HTTP-version names: 0 for exactly `HTTP/1.0`, 1 for exactly `HTTP/1.1`, nil for anything else.
    @inlinable
    public static func minorVersion(_ version: some Collection<UInt8>) -> Int? {
        guard version.count == 8 else { return nil }
        // Bytes in memory (a head's): the eight read as one word and compared twice.
        if let minor = version.withContiguousStorageIfAvailable({ bytes -> Int? in
            let word = UInt64(littleEndian: UnsafeRawBufferPointer(bytes).loadUnaligned(as: UInt64.self))
            return word == 0x302E_312F_5054_5448 ? 0 : word == 0x312E_312F_5054_5448 ? 1 : nil   // "HTTP/1.0", "HTTP/1.1"
        }) {
            return minor
        }
        // "HTTP/1." byte by byte (a comparison with a string's UTF-8 view showed in profiles).
        var byte = version.makeIterator()
        guard byte.next() == 0x48, byte.next() == 0x54, byte.next() == 0x54, byte.next() == 0x50,
              byte.next() == 0x2F, byte.next() == 0x31, byte.next() == 0x2E else { return nil }
        switch byte.next() {
        case UInt8(ascii: "0"): return 0
        case UInt8(ascii: "1"): return 1
        default: return nil
        }
    }

    /// The value of a hexadecimal digit (either case), nil for any other byte.
    @inlinable
    public static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// `bytes` without the spaces and tabs at either end.
    @inlinable
    public static func trimmed<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> Bytes.SubSequence {
        let isSpace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else {
            return bytes[bytes.startIndex..<bytes.startIndex]
        }
        return bytes[first...last]
    }

    /// A `Content-Length` field value: digits (at most 18), or a comma-separated
    /// list of the same digits (RFC 9110, section 8.6); nil for anything else, an empty value included.
    @inlinable
    public static func contentLength<Bytes: BidirectionalCollection<UInt8>>(_ value: Bytes) -> Int? {
        func digits(_ text: Bytes.SubSequence) -> Int? {
            guard !text.isEmpty, text.count <= 18, text.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
            return text.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
        }
        guard value.contains(UInt8(ascii: ",")) else { return digits(value[...]) }
        let values = value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).map { digits(trimmed($0)) }
        guard let first = values.first ?? nil, values.allSatisfy({ $0 == first }) else { return nil }
        return first
    }
}
