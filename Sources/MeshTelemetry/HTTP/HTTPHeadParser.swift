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
/// longer than ``headLimit``.
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
        var lines = LineReader(bytes: Array(bytes.prefix(headLimit + 1)))
        guard let startLine = lines.next() else { return prefixCouldStartHead(bytes) ? .incomplete : .invalid }
        var head: HTTPHead
        switch parseStartLine(startLine) {
        case .some(let parsed): head = parsed
        case .none: return .invalid
        }
        var contentLength: Int?
        var chunked = false
        var sawTransferEncoding = false
        while true {
            guard let line = lines.next() else {
                return lines.consumed >= headLimit || bytes.count > headLimit ? .invalid : .incomplete
            }
            if line.isEmpty { break }
            guard let (name, value) = parseField(line) else { return .invalid }
            switch name {
            case "host":
                if case .request(var request) = head, request.host == nil { request.host = value; head = .request(request) }
            case "traceparent":
                if case .request(var request) = head { request.traceparent = value; head = .request(request) }
            case "content-length":
                // A list of identical values is allowed; different ones are not.
                let values = value.split(separator: ",").map { $0.trimmingWhitespace() }
                guard let first = values.first, !first.isEmpty, first.allSatisfy(\.isASCIIDigit), first.count <= 18,
                      let parsed = Int(first), values.allSatisfy({ $0 == first }) else { return .invalid }
                if let contentLength, contentLength != parsed { return .invalid }
                contentLength = parsed
            case "transfer-encoding":
                sawTransferEncoding = true
                let codings = value.lowercased().split(separator: ",").map { $0.trimmingWhitespace() }
                chunked = codings.last == "chunked"
            default:
                break
            }
        }
        if sawTransferEncoding && contentLength != nil { return .invalid }
        let framing: HTTPBodyFraming
        switch head {
        case .request(var request):
            if sawTransferEncoding && !chunked { return .invalid }   // a request body must be delimited
            framing = chunked ? .chunked : .length(contentLength ?? 0)
            request.framing = framing
            head = .request(request)
        case .response(var response):
            framing = chunked ? .chunked : contentLength.map(HTTPBodyFraming.length) ?? .untilClose
            response.framing = framing
            head = .response(response)
        }
        return .complete(head, length: lines.consumed)
    }

    // MARK: Internals

    private static func parseStartLine(_ line: ArraySlice<UInt8>) -> HTTPHead? {
        let parts = line.split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
        if line.starts(with: Array("HTTP/1.".utf8)) {
            guard parts.count >= 2, isVersion(parts[0]), parts[1].count == 3, parts[1].allSatisfy(\.isASCIIDigitByte),
                  parts.count == 2 || parts[2].allSatisfy({ $0 == 0x09 || (0x20...0x7E).contains($0) || $0 >= 0x80 }),
                  let status = Int(String(decoding: parts[1], as: UTF8.self)), status >= 100 else { return nil }
            return .response(HTTPResponseHead(status: status, version: String(decoding: parts[0], as: UTF8.self), framing: .untilClose))
        }
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte), isVersion(parts[2]),
              !parts[1].isEmpty, parts[1].allSatisfy({ (0x21...0x7E).contains($0) }) else { return nil }
        return .request(HTTPRequestHead(
            method: String(decoding: parts[0], as: UTF8.self), target: String(decoding: parts[1].prefix(targetLimit), as: UTF8.self),
            version: String(decoding: parts[2], as: UTF8.self), host: nil, traceparent: nil, framing: .length(0)))
    }

    private static func isVersion(_ bytes: ArraySlice<UInt8>) -> Bool {
        bytes.count == 8 && bytes.starts(with: Array("HTTP/1.".utf8)) && (bytes.last == UInt8(ascii: "0") || bytes.last == UInt8(ascii: "1"))
    }

    /// `name: value`, the name lowercased, the value without surrounding whitespace.
    private static func parseField(_ line: ArraySlice<UInt8>) -> (String, String)? {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else { return nil }
        let name = line[line.startIndex..<colon]
        guard name.allSatisfy(isTokenByte) else { return nil }   // also refuses "name :" and folded lines
        let value = line[(colon + 1)...]
        guard value.allSatisfy({ $0 == 0x09 || (0x20...0x7E).contains($0) || $0 >= 0x80 }) else { return nil }
        return (String(decoding: name, as: UTF8.self).lowercased(), String(decoding: value, as: UTF8.self).trimmingWhitespace())
    }

    /// tchar (RFC 9110, section 5.6.2).
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// Whether bytes without a complete line could still begin a head.
    private static func prefixCouldStartHead(_ bytes: some Collection<UInt8>) -> Bool {
        guard bytes.count <= headLimit else { return false }
        let text = Array(bytes.prefix(8))
        if "HTTP/1.".utf8.starts(with: text) || text.starts(with: Array("HTTP/1.".utf8)) { return true }
        // A method token followed by a space, or still inside the token.
        guard let space = text.firstIndex(of: UInt8(ascii: " ")) else { return text.allSatisfy(isTokenByte) }
        return space > 0 && text[..<space].allSatisfy(isTokenByte)
    }

    /// Lines ended by CRLF or LF; a line containing a bare CR or other
    /// control byte is returned as is and refused by the field checks.
    private struct LineReader {
        let bytes: [UInt8]
        var consumed = 0

        mutating func next() -> ArraySlice<UInt8>? {
            guard let newline = bytes[consumed...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            var end = newline
            if end > consumed && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            let line = bytes[consumed..<end]
            consumed = newline + 1
            return line
        }
    }
}

extension UInt8 {
    var isASCIIDigitByte: Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self) }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs.
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
