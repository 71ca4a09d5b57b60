import Glibc
import MeshTelemetry
import NIOCore

/// Why a message head was refused: the reason goes into the 400 (or 502) answer.
struct HTTPWireError: Error, Equatable {
    let reason: String
}

/// A message head parsed strictly (RFC 9112) from its bytes, which it keeps
/// so that a head needing no change is forwarded exactly as it came: a
/// request head in storage of its own (it is kept for its exchange, and the
/// buffer it was read into is the next read's), a response head where it
/// was read (it is handed on at once; ``letGoOfBytes()`` then). Its fields
/// are offsets into those bytes: parsing copies nothing else out but a
/// request's method and target.
///
/// Strict means what request smuggling needs to be impossible: lines end in
/// CRLF only, no whitespace between a field name and its colon, no folded
/// lines, no control characters in values, a version of exactly `HTTP/1.0`
/// or `HTTP/1.1`.
///
/// A class: the request's handling passes a head on several times (to
/// routing, to the exchange, to the request's timeline), each pass one
/// reference rather than a copy of its strings, field list and bytes. A head
/// never changes while anything but its parser holds it: a connection gives
/// its last head back to be parsed into again (`reusing:`), which refills it
/// — object, field list and a request's bytes, no allocation — only when
/// nothing else holds it.
/// Its state is `@exclusivity(unchecked)` for that reason: written only then,
/// by one call that reaches nothing else.
final class HTTPWireHead {
    /// What the start line says: method and target (a request), status (a
    /// response), and the HTTP minor version (either).
    struct StartLine {
        var method = ""
        var target = ""
        var minorVersion = 1
        var status = 0
    }

    /// What parsing found: the start line, the fields and their known names.
    /// One value, so that a new head and a refilled one take all of it alike.
    private struct Parsed {
        var startLine: StartLine
        /// Where the start line lies in ``HTTPWireHead/bytes`` (without its CRLF).
        var startLineBytes: Range<Int32>
        var fields: [HTTPWireField]
        /// The known names among the fields' (``HTTPWireField/Name``), a bit
        /// each: a question about a known name that the head does not hold —
        /// the usual answer — looks at no field.
        var knownNames: HTTPWireField.KnownNames
    }

    @exclusivity(unchecked) private var parsed: Parsed
    /// The head as it came, its final empty line included.
    @exclusivity(unchecked) private(set) var bytes: ByteBuffer

    private init(_ parsed: Parsed, bytes: ByteBuffer) {
        self.parsed = parsed
        self.bytes = bytes
    }

    /// The header fields, in order.
    var fields: [HTTPWireField] { parsed.fields }
    private var startLine: StartLine { parsed.startLine }
    private var startLineBytes: Range<Int32> { parsed.startLineBytes }
    private var knownNames: HTTPWireField.KnownNames { parsed.knownNames }

    /// The request method (a request head; empty for a response).
    var method: String { startLine.method }
    /// The request target (a request head; empty for a response).
    var target: String { startLine.target }
    /// The HTTP minor version (0 or 1).
    var minorVersion: Int { startLine.minorVersion }
    /// The HTTP version as a start line spells it.
    var version: String { minorVersion == 0 ? "HTTP/1.0" : "HTTP/1.1" }
    /// A response's status code (0 for a request).
    var status: Int { startLine.status }

    /// Whether empty lines came before the start line (which then does not begin the head's bytes).
    var hasLeadingEmptyLines: Bool { startLineBytes.lowerBound != 0 }

    /// Lets go of the head's bytes (and so of the buffer a response head was
    /// read into), and of its fields, which lay in them (the list keeps its
    /// room); its start line is still read. For its parser's spare head, held
    /// by nothing else.
    func letGoOfBytes() {
        bytes = Self.noBytes
        parsed.fields.removeAllOneByOne()
        parsed.knownNames = HTTPWireField.KnownNames()
    }

    private static let noBytes = ByteBuffer()

    /// The field's name, as the sender spelled it.
    func name(of field: HTTPWireField) -> String { withBytes(field.name) { String(decoding: $0, as: UTF8.self) } }

    /// The field's value.
    func value(of field: HTTPWireField) -> String { withBytes(field.value) { String(decoding: $0, as: UTF8.self) } }

    /// Calls `body` with the bytes at `range` of the head. (Never inlined: a
    /// loop over the fields that calls it for some of them would otherwise
    /// read the buffer's storage, with its run-time exclusivity check, ahead
    /// of the loop even when no field matches — the usual case.)
    @inline(never)
    func withBytes<Result>(_ range: Range<Int32>, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        bytes.withUnsafeReadableBytes { body(UnsafeRawBufferPointer(rebasing: $0[Int(range.lowerBound)..<Int(range.upperBound)])) }
    }

    /// Whether `field` is named `lowercased` (given in lowercase), in any case.
    func field(_ field: HTTPWireField, isNamed lowercased: String) -> Bool {
        withBytes(field.name) { HTTPSyntax.equalsIgnoringCase($0, lowercased) }
    }

    /// The first value of the field `name`, if there is one.
    func value(_ name: HTTPWireField.Name) -> String? {
        guard contains(name) else { return nil }
        return fields.first { $0.known == name }.map(value(of:))
    }

    /// The first value of the field named `lowercased` (any name, given in lowercase), if there is one.
    func value(named lowercased: String) -> String? {
        if let known = HTTPWireField.Name(lowercased: lowercased) { return value(known) }
        return fields.first { field($0, isNamed: lowercased) }.map(value(of:))
    }

    /// How many fields are named `name`.
    func count(_ name: HTTPWireField.Name) -> Int {
        guard knownNames.isRepeated(name) else { return contains(name) ? 1 : 0 }
        return fields.reduce(0) { $0 + ($1.known == name ? 1 : 0) }
    }

    /// The value of the field named `lowercased` (any name, given in lowercase)
    /// and whether more than one field has that name — in one pass over the fields.
    func soleValue(named lowercased: String) -> (value: String?, repeated: Bool) {
        let known = HTTPWireField.Name(lowercased: lowercased)
        if let known, !contains(known) { return (nil, false) }
        var first: HTTPWireField?
        for field in fields where known.map({ field.known == $0 }) ?? self.field(field, isNamed: lowercased) {
            if let first { return (value(of: first), true) }
            first = field
        }
        return (first.map(value(of:)), false)
    }

    /// Whether the field `name` is present.
    func contains(_ name: HTTPWireField.Name) -> Bool { knownNames.contains(name) }

    /// Whether any field has one of the known names in `names`.
    func containsAny(of names: HTTPWireField.KnownNames) -> Bool { knownNames.overlaps(names) }

    /// Calls `body` with every comma-separated element of every field `name`,
    /// trimmed, as sent (empty ones left out): nothing is copied.
    func forEachToken(_ name: HTTPWireField.Name, _ body: (UnsafeRawBufferPointer.SubSequence) -> Void) {
        guard contains(name) else { return }
        for field in fields where field.known == name {
            withBytes(field.value) { value in
                for element in value.split(separator: UInt8(ascii: ",")) {
                    let token = HTTPSyntax.trimmed(element)
                    if !token.isEmpty { body(token) }
                }
            }
        }
    }

    /// Every comma-separated element of every field `name`, trimmed, lowercased, empty ones left out.
    func tokens(_ name: HTTPWireField.Name) -> [String] {
        var tokens: [String] = []
        forEachToken(name) { tokens.append(String(decoding: $0, as: UTF8.self).lowercased()) }
        return tokens
    }

    /// Whether an element of a field `name` is `lowercase` (given in lowercase), in any case.
    func hasToken(_ name: HTTPWireField.Name, _ lowercase: String) -> Bool {
        var found = false
        forEachToken(name) { if !found, HTTPSyntax.equalsIgnoringCase($0, lowercase) { found = true } }
        return found
    }

    /// The fields that concern one connection only: those named in
    /// `hopByHop` and those this head's `Connection` names, except `kept`.
    /// (Known names are bits: only a `Connection` naming another header makes a string.)
    func hopByHop(_ hopByHop: HTTPWireField.Names, keeping kept: HTTPWireField.Names) -> HTTPWireField.Names {
        var names = hopByHop
        forEachToken(.connection) { token in
            if let known = HTTPWireField.Name.recognizing(token) {
                if !kept.contains(known) { names.insert(known) }
            } else {
                names.insert(other: String(decoding: token, as: UTF8.self).lowercased())
            }
        }
        return names
    }

    /// The head rebuilt from `startLine` (nil: the start line as it came),
    /// the fields `keep` accepts and then `extra` fields.
    func rebuilt(startLine: String?, keeping keep: (HTTPWireField) -> Bool, adding extra: [(name: String, value: String)],
                 allocator: ByteBufferAllocator) -> ByteBuffer {
        var rebuilt = allocator.buffer(capacity: bytes.readableBytes + 32)
        if let startLine { rebuilt.writeString(startLine) } else { withBytes(startLineBytes) { _ = rebuilt.writeBytes($0) } }
        rebuilt.writeStaticString("\r\n")
        for field in fields where keep(field) {
            withBytes(field.name) { _ = rebuilt.writeBytes($0) }
            rebuilt.writeStaticString(": ")
            withBytes(field.value) { _ = rebuilt.writeBytes($0) }
            rebuilt.writeStaticString("\r\n")
        }
        for field in extra { rebuilt.writeString("\(field.name): \(field.value)\r\n") }
        rebuilt.writeStaticString("\r\n")
        return rebuilt
    }

    /// Whether the sender keeps the connection open after this message
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    func keepsAlive(minorVersion: Int) -> Bool {
        minorVersion == 1 ? !hasToken(.connection, "close") : hasToken(.connection, "keep-alive")
    }

    /// Where a head ends in `buffer`'s readable bytes: the length up to and
    /// including its empty line, or nil while it has not all arrived. Empty
    /// lines before a request line are part of the head (and ignored).
    /// `scanned` is where the previous search stopped, so bytes are looked at once.
    static func length(in buffer: ByteBuffer, scanned: inout Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes in
            // Leading empty lines, which a head may begin with.
            var start = 0
            while start + 1 < bytes.count, bytes[start] == 0x0D, bytes[start + 1] == 0x0A { start += 2 }
            var index = max(scanned, start + 3)
            // Only line feeds can end a head: memchr finds each, and the three bytes before it decide.
            while index < bytes.count, let lineFeed = position(of: 0x0A, in: bytes, from: index, to: bytes.count) {
                if bytes[lineFeed - 1] == 0x0D, bytes[lineFeed - 2] == 0x0A, bytes[lineFeed - 3] == 0x0D { return lineFeed + 1 }
                index = lineFeed + 1
            }
            scanned = max(bytes.count, 3)
            return nil
        }
    }

    /// Where `byte` first occurs in `bytes[from..<to]` (memchr, which scans many bytes at a time), nil if nowhere.
    private static func position(of byte: UInt8, in bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        guard from < to, let base = bytes.baseAddress, let found = memchr(base + from, Int32(byte), to - from) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }

    /// Parses a request head (`bytes` is exactly the head, as ``length(in:scanned:)`` found it)
    /// into `spare` if nothing else holds it, else into a new head; `spare` is nil afterwards.
    /// The head keeps a copy of `bytes`.
    static func request(_ bytes: ByteBuffer, reusing spare: inout HTTPWireHead?) throws(HTTPWireError) -> HTTPWireHead {
        try parse(bytes, reusing: &spare, copying: true) { line throws(HTTPWireError) in
            // method SP request-target SP HTTP-version
            guard let firstSpace = line.firstIndex(of: 0x20), let lastSpace = line.lastIndex(of: 0x20), firstSpace < lastSpace else {
                throw HTTPWireError(reason: "malformed request line")
            }
            let method = line[line.startIndex..<firstSpace], target = line[(firstSpace + 1)..<lastSpace], version = line[(lastSpace + 1)...]
            guard !method.isEmpty, method.allSatisfy(HTTPSyntax.isTokenByte) else { throw HTTPWireError(reason: "malformed request line") }
            guard !target.isEmpty, target.allSatisfy({ (0x21...0x7E).contains($0) }) else { throw HTTPWireError(reason: "malformed request target") }
            guard let minorVersion = HTTPSyntax.minorVersion(version) else {
                throw HTTPWireError(reason: "unsupported HTTP version \(String(decoding: version.prefix(16), as: UTF8.self))")
            }
            return StartLine(method: String(decoding: method, as: UTF8.self), target: String(decoding: target, as: UTF8.self), minorVersion: minorVersion)
        }
    }

    /// Parses a request head into a new head.
    static func request(_ bytes: ByteBuffer) throws(HTTPWireError) -> HTTPWireHead {
        var none: HTTPWireHead?
        return try request(bytes, reusing: &none)
    }

    /// Parses a response head (`bytes` is exactly the head) into `spare` if
    /// nothing else holds it, else into a new head; `spare` is nil afterwards.
    /// The head keeps `bytes` themselves.
    static func response(_ bytes: ByteBuffer, reusing spare: inout HTTPWireHead?) throws(HTTPWireError) -> HTTPWireHead {
        try parse(bytes, reusing: &spare, copying: false) { line throws(HTTPWireError) in
            // HTTP-version SP 3DIGIT SP [reason-phrase]
            let base = line.startIndex
            guard line.count >= 12, line[base + 8] == 0x20, line.count == 12 || line[base + 12] == 0x20,
                  let minorVersion = HTTPSyntax.minorVersion(line[base..<(base + 8)]) else {
                throw HTTPWireError(reason: "malformed status line")
            }
            let code = line[(base + 9)..<(base + 12)]
            guard code.allSatisfy({ (0x30...0x39).contains($0) }), code.first != 0x30, areValueBytes(line.dropFirst(13)) else {
                throw HTTPWireError(reason: "malformed status line")
            }
            return StartLine(minorVersion: minorVersion, status: code.reduce(0) { $0 * 10 + Int($1 - 0x30) })
        }
    }

    /// Parses a response head into a new head.
    static func response(_ bytes: ByteBuffer) throws(HTTPWireError) -> HTTPWireHead {
        var none: HTTPWireHead?
        return try response(bytes, reusing: &none)
    }

    /// Checks a head line by line: `startLine` reads the first; the rest are
    /// fields. The head is `spare`, refilled, when nothing else holds it; it
    /// keeps `buffer`, or with `copying` a copy (in the spare's storage when it can).
    private static func parse(_ buffer: ByteBuffer, reusing spare: inout HTTPWireHead?, copying: Bool,
                              startLine: (UnsafeRawBufferPointer.SubSequence) throws(HTTPWireError) -> StartLine) throws(HTTPWireError) -> HTTPWireHead {
        let reused = isKnownUniquelyReferenced(&spare) ? spare : nil
        spare = nil
        // The reused head's list, taken out of it (so that the list too has one holder, and is refilled in place).
        var fields = reused?.parsed.fields ?? []
        reused?.parsed.fields = []
        fields.removeAllOneByOne()
        if fields.capacity < 16 { fields.reserveCapacity(16) }   // (room for most heads: the list is allocated once)
        var knownNames = HTTPWireField.KnownNames()
        let result: Result<Parsed, HTTPWireError> = buffer.withUnsafeReadableBytes { bytes in
            do throws(HTTPWireError) {
                var start: (StartLine, Range<Int32>)?
                var lineStart = 0
                var ended = false
                // Line by line: each ends at its first CR, which a LF must follow; a LF before it is a bare one.
                while lineStart < bytes.count {
                    let carriageReturn = position(of: 0x0D, in: bytes, from: lineStart, to: bytes.count) ?? bytes.count
                    guard position(of: 0x0A, in: bytes, from: lineStart, to: carriageReturn) == nil else {
                        throw HTTPWireError(reason: "a line ends without CRLF")
                    }
                    guard carriageReturn < bytes.count else { break }   // the head has not ended
                    guard carriageReturn + 1 < bytes.count, bytes[carriageReturn + 1] == 0x0A else { throw HTTPWireError(reason: "a bare CR in the head") }
                    let line = bytes[lineStart..<carriageReturn]
                    lineStart = carriageReturn + 2
                    if start == nil {
                        if line.isEmpty { continue }   // empty lines before the start line
                        start = (try startLine(line), Int32(line.startIndex)..<Int32(line.endIndex))
                    } else if line.isEmpty {
                        ended = true
                        break
                    } else {
                        let field = try field(line)
                        if let known = field.known { knownNames.insert(known) }
                        fields.append(field)
                    }
                }
                guard ended, lineStart == bytes.count, let start else { throw HTTPWireError(reason: "malformed head") }
                return .success(Parsed(startLine: start.0, startLineBytes: start.1, fields: fields, knownNames: knownNames))
            } catch {
                return .failure(error)
            }
        }
        let parsed = try result.get()
        // (The offsets are from the readable bytes' start, where a copy's lie too.)
        guard let reused else { return HTTPWireHead(parsed, bytes: copying ? ByteBufferAllocator().buffer(buffer: buffer) : buffer) }
        reused.parsed = parsed
        if copying {
            // (Indices only, then one write: the storage is reached once.)
            reused.bytes.moveReaderIndex(to: 0)
            reused.bytes.moveWriterIndex(to: 0)
            reused.bytes.writeImmutableBuffer(buffer)
        } else {
            reused.bytes = buffer
        }
        return reused
    }

    /// One field line (a slice of the head's bytes): name, colon, optional whitespace, value, optional whitespace.
    private static func field(_ line: UnsafeRawBufferPointer.SubSequence) throws(HTTPWireError) -> HTTPWireField {
        guard let first = line.first, first != 0x20, first != 0x09 else { throw HTTPWireError(reason: "a folded header line (obs-fold)") }
        guard let colon = position(of: 0x3A, in: line.base, from: line.startIndex, to: line.endIndex), colon > line.startIndex else {
            throw HTTPWireError(reason: "a header line without a name and colon")
        }
        let name = line[line.startIndex..<colon]
        guard name.allSatisfy(HTTPSyntax.isTokenByte) else { throw HTTPWireError(reason: "an invalid header name") }
        var valueStart = colon + 1, valueEnd = line.endIndex
        while valueStart < valueEnd, line[valueStart] == 0x20 || line[valueStart] == 0x09 { valueStart += 1 }
        while valueEnd > valueStart, line[valueEnd - 1] == 0x20 || line[valueEnd - 1] == 0x09 { valueEnd -= 1 }
        guard areValueBytes(line[valueStart..<valueEnd]) else {
            throw HTTPWireError(reason: "a control character in header \(String(decoding: name, as: UTF8.self))")
        }
        // (A request head is at most 1 MiB, a response head 64 KiB: offsets fit in 32 bits.)
        return HTTPWireField(name: Int32(line.startIndex)..<Int32(colon), value: Int32(valueStart)..<Int32(valueEnd),
                             known: HTTPWireField.Name.recognizing(name))
    }

    /// Whether every byte can be in a field value: visible characters, space,
    /// tab and obs-text — no other control character, no DEL. One pass
    /// without an early exit, which the compiler turns into vector instructions.
    private static func areValueBytes(_ bytes: UnsafeRawBufferPointer.SubSequence) -> Bool {
        var invalid: UInt8 = 0
        for byte in UnsafeRawBufferPointer(rebasing: bytes) {
            invalid |= (byte < 0x20 ? 1 : 0) & (byte != 0x09 ? 1 : 0) | (byte == 0x7F ? 1 : 0)
        }
        return invalid == 0
    }
}
