/// A strict, allocation-light parser of HTTP/1 message heads, for bytes
/// observed on the wire (it never answers a peer: a head it refuses is
/// simply not telemetry).
///
/// It accepts what RFC 9112 allows senders to produce — a request line
/// `METHOD SP target SP HTTP/1.x`, a status line `HTTP/1.x SP 3DIGIT [SP
/// reason]`, header fields `name: value` — with CRLF or bare LF line ends,
/// and refuses anything else: control bytes, obsolete line folding,
/// whitespace before a colon, conflicting `Content-Length`s, a
/// `Transfer-Encoding` with `Content-Length` (a smuggling attempt), or a head
/// longer than ``headLimit``. It works on the bytes in place and creates
/// strings only for the fields it returns.
public enum HTTPHeadParser {
    /// The longest head accepted, in bytes.
    public static let headLimit = 16_384
    /// The longest request target kept, in characters; longer ones are cut.
    public static let targetLimit = 256

    /// The outcome of parsing the bytes seen so far.
    public enum Result: Sendable, Equatable {
        /// A complete head, and how many bytes it took (including the blank line).
        case complete(HTTPHead, length: Int)
        /// The bytes are a valid beginning; more are needed.
        case incomplete
        /// Not an HTTP/1 head.
        case invalid
    }

    /// Parses the head at the start of `bytes`.
    public static func parse(_ bytes: some Collection<UInt8>) -> Result {
        if let result = bytes.withContiguousStorageIfAvailable(parse(buffer:)) { return result }
        return Array(bytes).withUnsafeBufferPointer(parse(buffer:))
    }

    /// Parses the head at the start of `buffer`.
    public static func parse(buffer: UnsafeBufferPointer<UInt8>) -> Result {
        var reader = LineReader(bytes: UnsafeBufferPointer(rebasing: buffer.prefix(headLimit + 1)))
        guard let startLine = reader.next() else { return couldStartHead(buffer) ? .incomplete : .invalid }
        guard var head = parseStartLine(startLine) else { return .invalid }
        var contentLength: Int?
        var chunked = false
        var sawTransferEncoding = false
        while true {
            guard let line = reader.next() else { return buffer.count > headLimit ? .invalid : .incomplete }
            if line.isEmpty { break }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else { return .invalid }
            let name = line[line.startIndex..<colon]
            // A token: refuses "name :" and folded continuation lines.
            guard name.allSatisfy({ HTTPSyntax.isTokenByte($0) }) else { return .invalid }
            let value = HTTPSyntax.trimmed(line[(colon + 1)...])
            guard value.allSatisfy({ $0 == 0x09 || $0 >= 0x20 && $0 != 0x7F }) else { return .invalid }
            switch FieldName(name) {
            case .host:
                if case .request(var request) = head, request.host == nil {
                    request.host = String(decoding: value, as: UTF8.self)
                    head = .request(request)
                }
            case .traceparent:
                if case .request(var request) = head {
                    request.traceparent = String(decoding: value, as: UTF8.self)
                    head = .request(request)
                }
            case .contentLength:
                // A list of identical values is allowed; different ones are not.
                guard let parsed = HTTPSyntax.contentLength(value) else { return .invalid }
                if let contentLength, contentLength != parsed { return .invalid }
                contentLength = parsed
            case .transferEncoding:
                sawTransferEncoding = true
                let last = value.lastIndex(of: UInt8(ascii: ",")).map { value[($0 + 1)...] } ?? value[...]
                chunked = HTTPSyntax.equalsIgnoringCase(HTTPSyntax.trimmed(last), "chunked")
            case .other:
                break
            }
        }
        if sawTransferEncoding && contentLength != nil { return .invalid }
        // Transfer codings are HTTP/1.1; an HTTP/1.0 message using them is faulty (RFC 9112, 6.1).
        if chunked, case .request(let request) = head, request.version == http10 { return .invalid }
        if chunked, case .response(let response) = head, response.version == http10 { return .invalid }
        switch head {
        case .request(var request):
            if sawTransferEncoding && !chunked { return .invalid }   // a request body must be delimited
            request.framing = chunked ? .chunked : .length(contentLength ?? 0)
            head = .request(request)
        case .response(var response):
            response.framing = chunked ? .chunked : contentLength.map(HTTPBodyFraming.length) ?? .untilClose
            head = .response(response)
        }
        return .complete(head, length: reader.consumed)
    }

    /// The start line alone, from bytes whose head was cut off before its end
    /// (its framing headers unseen): the message's framing is unknown.
    public static func parseStartLine(of bytes: [UInt8]) -> HTTPHead? {
        bytes.withUnsafeBufferPointer { buffer in
            var reader = LineReader(bytes: UnsafeBufferPointer(rebasing: buffer.prefix(headLimit)))
            return reader.next().flatMap(parseStartLine)
        }
    }

    // MARK: Internals

    private typealias Bytes = Slice<UnsafeBufferPointer<UInt8>>

    private enum FieldName {
        case host, traceparent, contentLength, transferEncoding, other

        init(_ name: Bytes) {
            switch name.count {
            case 4 where HTTPSyntax.equalsIgnoringCase(name, "host"): self = .host
            case 11 where HTTPSyntax.equalsIgnoringCase(name, "traceparent"): self = .traceparent
            case 14 where HTTPSyntax.equalsIgnoringCase(name, "content-length"): self = .contentLength
            case 17 where HTTPSyntax.equalsIgnoringCase(name, "transfer-encoding"): self = .transferEncoding
            default: self = .other
            }
        }
    }

    private static func parseStartLine(_ line: Bytes) -> HTTPHead? {
        guard let firstSpace = line.firstIndex(of: UInt8(ascii: " ")) else { return nil }
        let first = line[line.startIndex..<firstSpace]
        let rest = line[(firstSpace + 1)...]
        if let version = version(first) {
            // HTTP-version SP 3DIGIT [SP reason-phrase]
            let code = rest.prefix(3)
            guard code.count == 3, code.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                  rest.count == 3 || rest[rest.startIndex + 3] == UInt8(ascii: " ") else { return nil }
            guard rest.dropFirst(3).allSatisfy({ $0 == 0x09 || $0 >= 0x20 && $0 != 0x7F }) else { return nil }
            let status = code.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard status >= 100 else { return nil }
            return .response(HTTPResponseHead(status: status, version: version, framing: .untilClose))
        }
        // method SP request-target SP HTTP-version
        guard !first.isEmpty, first.allSatisfy({ HTTPSyntax.isTokenByte($0) }),
              let secondSpace = rest.firstIndex(of: UInt8(ascii: " ")) else { return nil }
        let target = rest[rest.startIndex..<secondSpace]
        guard !target.isEmpty, target.allSatisfy({ (0x21...0x7E).contains($0) }),
              let version = version(rest[(secondSpace + 1)...]) else { return nil }
        return .request(HTTPRequestHead(
            method: knownMethod(first) ?? String(decoding: first, as: UTF8.self),
            target: String(decoding: target.prefix(targetLimit), as: UTF8.self),
            version: version, host: nil, traceparent: nil, framing: .length(0)))
    }

    private static let http10 = "HTTP/1.0", http11 = "HTTP/1.1"

    private static func version(_ bytes: Bytes) -> String? {
        HTTPSyntax.minorVersion(bytes).map { $0 == 1 ? http11 : http10 }
    }

    /// The common methods as shared string constants, so parsing one allocates nothing.
    private static let methods = ["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]

    private static func knownMethod(_ bytes: Bytes) -> String? {
        methods.first { $0.utf8.count == bytes.count && $0.utf8.elementsEqual(bytes) }
    }

    /// Whether bytes without a complete line could still begin a head.
    private static func couldStartHead(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard bytes.count <= headLimit else { return false }
        let text = bytes.prefix(8)
        if "HTTP/1.".utf8.starts(with: text) || text.starts(with: "HTTP/1.".utf8) { return true }
        // A method token followed by a space, or still inside the token.
        guard let space = text.firstIndex(of: UInt8(ascii: " ")) else { return text.allSatisfy { HTTPSyntax.isTokenByte($0) } }
        return space > text.startIndex && text[..<space].allSatisfy { HTTPSyntax.isTokenByte($0) }
    }

    /// Lines ended by CRLF or LF, without their ends; a line containing a bare
    /// CR or other control byte is returned as is and refused by the field checks.
    private struct LineReader {
        let bytes: UnsafeBufferPointer<UInt8>
        var consumed = 0

        mutating func next() -> Bytes? {
            guard let newline = bytes[consumed...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            var end = newline
            if end > consumed && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            let line = bytes[consumed..<end]
            consumed = newline + 1
            return line
        }
    }
}
