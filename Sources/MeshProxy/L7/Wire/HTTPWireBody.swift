import MeshTelemetry
import NIOCore

/// Where a message body ends, followed through its bytes as they pass
/// (they are forwarded as they came, never decoded and encoded again).
enum HTTPWireBody {
    /// This many bytes are left.
    case length(Int)
    /// A chunked body, read this far.
    case chunked(ChunkedBodyScanner)
    /// The body ends when the sender closes the connection (responses only).
    case untilClose

    /// Whether the body is chunked.
    var isChunked: Bool { if case .chunked = self { true } else { false } }

    /// How much of `buffer`'s readable bytes belong to the body, and whether
    /// the body ends with them. Throws on malformed chunked framing.
    mutating func advance(over buffer: ByteBuffer) throws(HTTPWireError) -> (count: Int, complete: Bool) {
        switch self {
        case .length(let left):
            let count = min(left, buffer.readableBytes)
            self = .length(left - count)
            return (count, left == count)
        case .chunked(var scanner):
            let result = try scanner.scan(buffer)
            self = .chunked(scanner)
            return result
        case .untilClose:
            return (buffer.readableBytes, false)
        }
    }

    /// A request's body framing, by RFC 9112 section 6, refusing what a
    /// smuggler could make two servers read differently: Transfer-Encoding
    /// other than exactly `chunked`, with Content-Length as well, or in
    /// HTTP/1.0; several differing or non-numeric Content-Length values; a
    /// body on TRACE.
    static func request(_ head: HTTPWireHead) throws(HTTPWireError) -> HTTPWireBody {
        let framing: HTTPWireBody
        if head.contains(.transferEncoding) {
            // (An empty or comma-only field, read differently by different servers, is no `chunked` either.)
            let codings = head.tokens(.transferEncoding)
            guard codings == ["chunked"] else {
                throw HTTPWireError(reason: "transfer-encoding \(codings.joined(separator: ", ")) is not supported: only chunked")
            }
            guard !head.contains(.contentLength) else {
                throw HTTPWireError(reason: "both Content-Length and Transfer-Encoding: a request smuggling attempt")
            }
            guard head.minorVersion == 1 else { throw HTTPWireError(reason: "Transfer-Encoding in an HTTP/1.0 request") }
            framing = .chunked(ChunkedBodyScanner())
        } else {
            framing = .length(try contentLength(head) ?? 0)
        }
        if head.method == "TRACE" {
            guard case .length(0) = framing else { throw HTTPWireError(reason: "a TRACE request must not have a body") }
        }
        return framing
    }

    /// A response's body framing, given the request it answers (RFC 9112
    /// section 6.3): none after HEAD and for 1xx, 204 and 304; chunked when
    /// chunked is the last transfer coding, else until close when there is
    /// a Transfer-Encoding; Content-Length; else until close.
    static func response(_ head: HTTPWireHead, toRequestMethod method: String) throws(HTTPWireError) -> HTTPWireBody {
        guard HTTPResponseHead.hasBody(status: head.status, requestMethod: method) else { return .length(0) }
        if head.contains(.transferEncoding) {
            guard let last = head.tokens(.transferEncoding).last else { throw HTTPWireError(reason: "an empty Transfer-Encoding") }
            return last == "chunked" ? .chunked(ChunkedBodyScanner()) : .untilClose
        }
        if let length = try contentLength(head) { return .length(length) }
        return .untilClose
    }

    /// The one length the head's Content-Length fields agree on, nil without
    /// any; an empty, non-numeric or differing value is refused.
    private static func contentLength(_ head: HTTPWireHead) throws(HTTPWireError) -> Int? {
        guard head.contains(.contentLength) else { return nil }
        var length: Int?
        for field in head.fields where field.known == .contentLength {
            guard let value = head.withBytes(field.value, HTTPSyntax.contentLength), length == nil || length == value else {
                throw HTTPWireError(reason: "an invalid or conflicting Content-Length")
            }
            length = value
        }
        return length
    }
}

/// Follows a chunked body (RFC 9112 section 7.1) through its bytes: chunk
/// sizes, extensions, data, the last chunk and the trailer section, strictly
/// (CRLF line ends, at most 15 hex digits of size).
struct ChunkedBodyScanner {
    private enum State {
        case size(digits: Int, value: Int)
        case extensions
        case sizeLineFeed
        case data(left: Int)
        case dataCarriageReturn
        case dataLineFeed
        case trailerLineStart
        case trailerLine
        case trailerLineFeed
        case finalLineFeed
        case done
    }

    private var state = State.size(digits: 0, value: 0)
    /// Whether the last chunk has been seen (only the trailer section is left).
    private var lastChunk = false

    /// How many of `buffer`'s readable bytes belong to the body, and whether it ends with them.
    mutating func scan(_ buffer: ByteBuffer) throws(HTTPWireError) -> (count: Int, complete: Bool) {
        let outcome: Result<(Int, Bool), HTTPWireError> = buffer.withUnsafeReadableBytes { bytes in
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                switch state {
                case .size(let digits, let value):
                    if let digit = HTTPSyntax.hexValue(byte).map(Int.init) {
                        guard digits < 15 else { return .failure(HTTPWireError(reason: "a chunk size too large")) }
                        state = .size(digits: digits + 1, value: value << 4 | digit)
                    } else {
                        guard digits > 0 else { return .failure(HTTPWireError(reason: "malformed chunk size")) }
                        switch byte {
                        case 0x0D: state = .sizeLineFeed
                        case 0x3B, 0x20, 0x09: state = .extensions
                        default: return .failure(HTTPWireError(reason: "malformed chunk size"))
                        }
                        lastChunk = value == 0
                        pendingSize = value
                    }
                case .extensions:
                    if byte == 0x0D {
                        state = .sizeLineFeed
                    } else if byte == 0x0A || (byte < 0x20 && byte != 0x09) || byte == 0x7F {
                        return .failure(HTTPWireError(reason: "malformed chunk extension"))
                    }
                case .sizeLineFeed:
                    guard byte == 0x0A else { return .failure(HTTPWireError(reason: "a chunk size line ends without CRLF")) }
                    state = lastChunk ? .trailerLineStart : .data(left: pendingSize)
                case .data(let left):
                    let take = min(left, bytes.count - index)
                    index += take
                    state = take == left ? .dataCarriageReturn : .data(left: left - take)
                    continue
                case .dataCarriageReturn:
                    guard byte == 0x0D else { return .failure(HTTPWireError(reason: "chunk data longer than its size")) }
                    state = .dataLineFeed
                case .dataLineFeed:
                    guard byte == 0x0A else { return .failure(HTTPWireError(reason: "chunk data longer than its size")) }
                    state = .size(digits: 0, value: 0)
                case .trailerLineStart:
                    state = byte == 0x0D ? .finalLineFeed : .trailerLine
                    if byte == 0x0A { return .failure(HTTPWireError(reason: "a trailer line ends without CRLF")) }
                case .trailerLine:
                    if byte == 0x0D { state = .trailerLineFeed } else if byte == 0x0A { return .failure(HTTPWireError(reason: "a trailer line ends without CRLF")) }
                case .trailerLineFeed:
                    guard byte == 0x0A else { return .failure(HTTPWireError(reason: "a trailer line ends without CRLF")) }
                    state = .trailerLineStart
                case .finalLineFeed:
                    guard byte == 0x0A else { return .failure(HTTPWireError(reason: "a chunked body ends without CRLF")) }
                    state = .done
                    return .success((index + 1, true))
                case .done:
                    return .success((0, true))
                }
                index += 1
            }
            return .success((bytes.count, false))
        }
        return try outcome.get()
    }

    /// The size of the chunk whose size line is being read.
    private var pendingSize = 0
}
