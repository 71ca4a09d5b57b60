import MeshTelemetry
import NIOCore

/// Why a message head was refused: the reason goes into the 400 (or 502) answer.
struct HTTPWireError: Error, Equatable {
    let reason: String
}

/// One header field of a head, as it came (the name in the sender's case,
/// the value without the whitespace around it).
struct HTTPWireField: Equatable {
    let name: String
    let value: String

    /// Whether the field's name is `lowercased` (given in lowercase), in any case.
    func isNamed(_ lowercased: String) -> Bool { HTTPSyntax.equalsIgnoringCase(name.utf8, lowercased) }
}

/// A message head parsed strictly (RFC 9112) from its bytes, which are kept
/// so that a head needing no change is forwarded exactly as it came.
///
/// Strict means what request smuggling needs to be impossible: lines end in
/// CRLF only, no whitespace between a field name and its colon, no folded
/// lines, no control characters in values, a version of exactly `HTTP/1.0`
/// or `HTTP/1.1`.
struct HTTPWireHead {
    /// The start line's three parts: method, target, version (request), or
    /// version, status code, reason (response).
    let start: (String, String, String)
    let fields: [HTTPWireField]
    /// The head as it came, its final empty line included.
    let bytes: ByteBuffer

    /// The request method (a request head).
    var method: String { start.0 }
    /// The request target (a request head).
    var target: String { start.1 }
    /// A request's HTTP minor version (0 or 1).
    var requestMinorVersion: Int { start.2 == "HTTP/1.0" ? 0 : 1 }
    /// A response's HTTP minor version (0 or 1).
    var responseMinorVersion: Int { start.0 == "HTTP/1.0" ? 0 : 1 }
    /// A response's status code, read once when the head is parsed (0 for a request).
    private(set) var status = 0

    /// The first value of the field `name` (lowercase), if there is one.
    func value(_ name: String) -> String? {
        fields.first { $0.isNamed(name) }?.value
    }

    /// Every comma-separated element of every field `name` (lowercase), trimmed, lowercased, empty ones left out.
    func tokens(_ name: String) -> [String] {
        var tokens: [String] = []
        for field in fields where field.isNamed(name) {
            for element in field.value.split(separator: ",") {
                let token = Substring(HTTPSyntax.trimmed(element.utf8)).lowercased()
                if !token.isEmpty { tokens.append(token) }
            }
        }
        return tokens
    }

    /// How many fields are named `name` (lowercase).
    func count(_ name: String) -> Int { fields.reduce(0) { $0 + ($1.isNamed(name) ? 1 : 0) } }

    /// A test for the fields that concern one connection only: those named in
    /// `hopByHop` (lowercase) and those this head's `Connection` names, except `kept`.
    func hopByHop(_ hopByHop: [String], keeping kept: [String]) -> (HTTPWireField) -> Bool {
        let named = contains("connection") ? tokens("connection").filter { !kept.contains($0) } : []
        return { field in hopByHop.contains { field.isNamed($0) } || named.contains { field.isNamed($0) } }
    }

    /// The head rebuilt from `startLine`, the fields `keep` accepts and then `extra` fields.
    func rebuilt(startLine: String, keeping keep: (HTTPWireField) -> Bool, adding extra: [(name: String, value: String)],
                 allocator: ByteBufferAllocator) -> ByteBuffer {
        var rebuilt = allocator.buffer(capacity: bytes.readableBytes + 32)
        rebuilt.writeString(startLine + "\r\n")
        for field in fields where keep(field) { rebuilt.writeString("\(field.name): \(field.value)\r\n") }
        for field in extra { rebuilt.writeString("\(field.name): \(field.value)\r\n") }
        rebuilt.writeStaticString("\r\n")
        return rebuilt
    }

    /// Whether the sender keeps the connection open after this message
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    func keepsAlive(minorVersion: Int) -> Bool {
        let connection = tokens("connection")
        return minorVersion == 1 ? !connection.contains("close") : connection.contains("keep-alive")
    }

    /// Whether the field `name` (lowercase) is present.
    func contains(_ name: String) -> Bool { fields.contains { $0.isNamed(name) } }

    /// Where a head ends in `buffer`'s readable bytes: the length up to and
    /// including its empty line, or nil while it has not all arrived. Empty
    /// lines before a request line are part of the head (and ignored).
    /// `scanned` is where the previous search stopped, so bytes are looked at once.
    static func length(in buffer: ByteBuffer, scanned: inout Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes in
            var index = max(scanned, 3)
            // Leading empty lines, which a head may begin with.
            var start = 0
            while start + 1 < bytes.count, bytes[start] == 0x0D, bytes[start + 1] == 0x0A { start += 2 }
            index = max(index, start + 3)
            while index < bytes.count {
                if bytes[index] == 0x0A, bytes[index - 1] == 0x0D, bytes[index - 2] == 0x0A, bytes[index - 3] == 0x0D, index - 3 >= start {
                    return index + 1
                }
                index += 1
            }
            scanned = max(bytes.count, 3)
            return nil
        }
    }

    /// Parses a request head (`bytes` is exactly the head, as ``length(in:scanned:)`` found it).
    static func request(_ bytes: ByteBuffer) throws(HTTPWireError) -> HTTPWireHead {
        try parse(bytes) { line throws(HTTPWireError) in
            // method SP request-target SP HTTP-version
            guard let firstSpace = line.firstIndex(of: 0x20), let lastSpace = line.lastIndex(of: 0x20), firstSpace < lastSpace else {
                throw HTTPWireError(reason: "malformed request line")
            }
            let method = line[line.startIndex..<firstSpace], target = line[(firstSpace + 1)..<lastSpace], version = line[(lastSpace + 1)...]
            guard !method.isEmpty, method.allSatisfy(HTTPSyntax.isTokenByte) else { throw HTTPWireError(reason: "malformed request line") }
            guard !target.isEmpty, target.allSatisfy({ (0x21...0x7E).contains($0) }) else { throw HTTPWireError(reason: "malformed request target") }
            let text = String(decoding: version, as: UTF8.self)
            guard text == "HTTP/1.1" || text == "HTTP/1.0" else { throw HTTPWireError(reason: "unsupported HTTP version \(text.prefix(16))") }
            return (String(decoding: method, as: UTF8.self), String(decoding: target, as: UTF8.self), text)
        }
    }

    /// Parses a response head (`bytes` is exactly the head).
    static func response(_ bytes: ByteBuffer) throws(HTTPWireError) -> HTTPWireHead {
        var head = try parse(bytes) { line throws(HTTPWireError) in
            // HTTP-version SP 3DIGIT SP [reason-phrase]
            let base = line.startIndex
            guard line.count >= 12, line[base + 8] == 0x20, line.count == 12 || line[base + 12] == 0x20 else {
                throw HTTPWireError(reason: "malformed status line")
            }
            let version = String(decoding: line[base..<(base + 8)], as: UTF8.self)
            let code = line[(base + 9)..<(base + 12)]
            let reason = line.dropFirst(13)
            guard version == "HTTP/1.1" || version == "HTTP/1.0", code.allSatisfy({ (0x30...0x39).contains($0) }), code.first != 0x30,
                  reason.allSatisfy(isValueByte) else {
                throw HTTPWireError(reason: "malformed status line")
            }
            return (version, String(decoding: code, as: UTF8.self), String(decoding: reason, as: UTF8.self))
        }
        head.status = Int(head.start.1) ?? 0   // three digits, checked above
        return head
    }

    /// Checks a head line by line: `startLine` reads the first; the rest are fields.
    private static func parse(_ buffer: ByteBuffer,
                              startLine: (UnsafeRawBufferPointer.SubSequence) throws(HTTPWireError) -> (String, String, String))
        throws(HTTPWireError) -> HTTPWireHead {
        let result: Result<((String, String, String), [HTTPWireField]), HTTPWireError> = buffer.withUnsafeReadableBytes { bytes in
            do throws(HTTPWireError) {
                var start: (String, String, String)?
                var fields: [HTTPWireField] = []
                var lineStart = 0
                var index = 0
                var ended = false
                while index < bytes.count {
                    let byte = bytes[index]
                    if byte == 0x0D {
                        guard index + 1 < bytes.count, bytes[index + 1] == 0x0A else { throw HTTPWireError(reason: "a bare CR in the head") }
                        let line = bytes[lineStart..<index]
                        index += 2
                        lineStart = index
                        if start == nil {
                            if line.isEmpty { continue }   // empty lines before the start line
                            start = try startLine(line)
                        } else if line.isEmpty {
                            ended = true
                            break
                        } else {
                            fields.append(try field(line))
                        }
                        continue
                    }
                    guard byte != 0x0A else { throw HTTPWireError(reason: "a line ends without CRLF") }
                    index += 1
                }
                guard ended, index == bytes.count, let start else { throw HTTPWireError(reason: "malformed head") }
                return .success((start, fields))
            } catch {
                return .failure(error)
            }
        }
        let (start, fields) = try result.get()
        return HTTPWireHead(start: start, fields: fields, bytes: buffer)
    }

    /// One field line: name, colon, optional whitespace, value, optional whitespace.
    private static func field(_ line: UnsafeRawBufferPointer.SubSequence) throws(HTTPWireError) -> HTTPWireField {
        guard let first = line.first, first != 0x20, first != 0x09 else { throw HTTPWireError(reason: "a folded header line (obs-fold)") }
        guard let colon = line.firstIndex(of: 0x3A), colon > line.startIndex else { throw HTTPWireError(reason: "a header line without a name and colon") }
        let name = line[line.startIndex..<colon]
        guard name.allSatisfy(HTTPSyntax.isTokenByte) else { throw HTTPWireError(reason: "an invalid header name") }
        var valueStart = colon + 1, valueEnd = line.endIndex
        while valueStart < valueEnd, line[valueStart] == 0x20 || line[valueStart] == 0x09 { valueStart += 1 }
        while valueEnd > valueStart, line[valueEnd - 1] == 0x20 || line[valueEnd - 1] == 0x09 { valueEnd -= 1 }
        let value = line[valueStart..<valueEnd]
        guard value.allSatisfy(isValueByte) else {
            throw HTTPWireError(reason: "a control character in header \(String(decoding: name, as: UTF8.self))")
        }
        return HTTPWireField(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
    }

    /// A field value's bytes: visible characters, space, tab and obs-text.
    private static func isValueByte(_ byte: UInt8) -> Bool {
        byte == 0x09 || (0x20...0x7E).contains(byte) || byte >= 0x80
    }
}
