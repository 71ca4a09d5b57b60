/// Follows the HTTP/1 messages of one direction of one connection end, from
/// the calls the kernel reported: finds each head (across calls when it is
/// split, several in one call when requests are pipelined) and the end of
/// each body, by `Content-Length`, by the zero-size chunk, or at close.
///
/// Body bytes are counted, never seen: the kernel reports body calls by
/// length and last bytes only. A chunked body ends when the bytes of the
/// stream end with `\n0\r\n\r\n` (across calls; chunk extensions on the last
/// chunk and trailers are not followed). A head longer than the kernel's
/// capture keeps its start line, and its message ends where the next head
/// begins (or at close).
public struct HTTPMessageStream: Sendable {
    /// What the stream found in one call.
    public enum Event: Sendable, Equatable {
        /// A head, parsed; `timestamp` is the call's.
        case head(HTTPHead, timestamp: UInt64)
        /// The message that began with the last head ended, after `bytes` in all (head and body).
        case end(timestamp: UInt64, bytes: Int)
        /// Bytes that should have held a head could not be followed (the stream
        /// waits for the next head): a message was lost.
        case lost(timestamp: UInt64)
    }

    private enum State: Sendable {
        case awaitingHead(buffered: [UInt8])
        case body(remaining: Int)
        case chunked
        case untilClose
        /// The head was cut off: the message runs until the next head.
        case untilNextHead
    }

    private var state: State = .awaitingHead(buffered: [])
    private var messageBytes = 0
    private var lastTimestamp: UInt64 = 0
    /// The stream's last 8 bytes, most recent in the low byte (for the end of a chunked body).
    private var recent: UInt64 = 0
    /// Bytes that could not be followed (uncaptured data where a head was expected, refused heads).
    public private(set) var unparsedBytes = 0
    /// Heads refused as not HTTP/1.
    public private(set) var invalidHeads = 0

    /// A stream waiting for its first head.
    public init() {}

    /// Consumes one call: `length` bytes, of which `data` are the first ones
    /// (or none), ending with `tail`. `hasBody` tells whether a response head
    /// is followed by a body (it depends on the request it answers).
    public mutating func consume(length: Int, data: [UInt8], tail: SocketIOEvent.Tail, timestamp: UInt64,
                                 hasBody: (HTTPHead) -> Bool) -> [Event] {
        var events: [Event] = []
        var offset = 0
        defer {
            remember(tail, length: length)
            lastTimestamp = timestamp
        }
        while offset < length {
            switch state {
            case .awaitingHead(let buffered):
                guard offset < data.count else {
                    // The kernel did not copy these bytes: not a head it recognised.
                    lose(length - offset, invalid: !buffered.isEmpty, timestamp: timestamp, events: &events)
                    return events
                }
                // Parse in place; only a head split across calls is joined.
                let candidate: [UInt8]? = buffered.isEmpty ? nil : buffered + data[offset...]
                let parsed = candidate.map { HTTPHeadParser.parse($0) }
                    ?? data.withUnsafeBufferPointer { HTTPHeadParser.parse(buffer: UnsafeBufferPointer(rebasing: $0[offset...])) }
                switch parsed {
                case .complete(let head, let headLength):
                    offset += headLength - buffered.count
                    messageBytes = headLength
                    events.append(.head(head, timestamp: timestamp))
                    startBody(of: head, hasBody: hasBody(head), timestamp: timestamp, events: &events)
                case .incomplete where data.count >= length:
                    // The whole call was seen and the head goes on: keep it for the next call.
                    state = .awaitingHead(buffered: candidate ?? Array(data[offset...]))
                    return events
                case .incomplete:
                    // The call was longer than the capture and the head goes on past it:
                    // keep what the start line says; the message ends at the next head.
                    let bytes = candidate ?? Array(data[offset...])
                    guard let head = HTTPHeadParser.parseStartLine(of: bytes) else {
                        lose(length - offset, invalid: true, timestamp: timestamp, events: &events)
                        return events
                    }
                    messageBytes = length - offset + buffered.count
                    events.append(.head(head, timestamp: timestamp))
                    if hasBody(head) {
                        state = .untilNextHead
                    } else {
                        finish(timestamp: timestamp, events: &events)
                    }
                    return events
                case .invalid:
                    lose(length - offset, invalid: true, timestamp: timestamp, events: &events)
                    return events
                }
            case .body(let remaining):
                let taken = min(remaining, length - offset)
                offset += taken
                messageBytes += taken
                if taken == remaining {
                    finish(timestamp: timestamp, events: &events)
                } else {
                    state = .body(remaining: remaining - taken)
                }
            case .chunked:
                messageBytes += length - offset
                offset = length
                if endsChunkedBody(tail, length: length) { finish(timestamp: timestamp, events: &events) }
            case .untilClose:
                messageBytes += length - offset
                offset = length
            case .untilNextHead:
                if offset < data.count, Self.beginsHead(data[offset...]) {
                    // The next message begins: the cut-off one ended with the previous call.
                    events.append(.end(timestamp: lastTimestamp, bytes: messageBytes))
                    messageBytes = 0
                    state = .awaitingHead(buffered: [])
                } else {
                    messageBytes += length - offset
                    offset = length
                }
            }
        }
        return events
    }

    /// The connection closed: a message delimited by the close ends here.
    public mutating func close(timestamp: UInt64) -> [Event] {
        defer { state = .awaitingHead(buffered: []) }
        switch state {
        case .untilClose: return [.end(timestamp: timestamp, bytes: messageBytes)]
        case .untilNextHead: return [.end(timestamp: lastTimestamp, bytes: messageBytes)]
        default: return []
        }
    }

    private mutating func startBody(of head: HTTPHead, hasBody: Bool, timestamp: UInt64, events: inout [Event]) {
        switch hasBody ? head.framing : .length(0) {
        case .length(0): finish(timestamp: timestamp, events: &events)
        case .length(let length): state = .body(remaining: length)
        case .chunked: state = .chunked
        case .untilClose: state = .untilClose
        }
    }

    /// `bytes` that cannot be followed: counted, the message reported lost, the next head awaited.
    private mutating func lose(_ bytes: Int, invalid: Bool, timestamp: UInt64, events: inout [Event]) {
        if invalid { invalidHeads += 1 }
        unparsedBytes += bytes
        state = .awaitingHead(buffered: [])
        events.append(.lost(timestamp: timestamp))
    }

    /// Whether a call's bytes begin a message head: a whole one, or the start
    /// line of one cut off by the capture or split across calls.
    private static func beginsHead(_ bytes: ArraySlice<UInt8>) -> Bool {
        switch HTTPHeadParser.parse(bytes) {
        case .complete: true
        case .incomplete: HTTPHeadParser.parseStartLine(of: Array(bytes)) != nil
        case .invalid: false
        }
    }

    private mutating func finish(timestamp: UInt64, events: inout [Event]) {
        events.append(.end(timestamp: timestamp, bytes: messageBytes))
        messageBytes = 0
        state = .awaitingHead(buffered: [])
    }

    /// Shifts a call's last bytes into the stream's last 8.
    private mutating func remember(_ tail: SocketIOEvent.Tail, length: Int) {
        if length >= 8 && tail.count == 8 { recent = 0 }
        for byte in tail { recent = recent << 8 | UInt64(byte) }
    }

    /// Whether the stream, with this call, ends with the last chunk: `\n0\r\n\r\n`.
    private func endsChunkedBody(_ tail: SocketIOEvent.Tail, length: Int) -> Bool {
        var window = length >= 8 && tail.count == 8 ? 0 : recent
        for byte in tail { window = window << 8 | UInt64(byte) }
        return window & 0xFFFF_FFFF_FFFF == 0x0A_30_0D_0A_0D_0A
    }
}
