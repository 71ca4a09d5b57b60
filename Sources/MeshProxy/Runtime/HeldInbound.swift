import NIOCore

/// What a connection read, and the inbound events it saw, while nothing was
/// in place to serve it yet: held in order, then passed on as they came or,
/// for a connection leaving NIO, taken as bytes.
///
/// NIO reads a socket whose peer ended its output to that end even while
/// reading is off, and passes the bytes and the half-close down the pipeline
/// at once: without a holder they would reach its tail and be lost.
struct HeldInbound {
    private enum Item {
        case bytes(ByteBuffer)
        case event(Any)
    }

    private var items: [Item] = []

    /// Nothing is held.
    var isEmpty: Bool { items.isEmpty }

    /// Holds a read's bytes.
    mutating func append(_ bytes: ByteBuffer) {
        items.append(.bytes(bytes))
    }

    /// Holds an inbound event (a half-close), behind the bytes read before it.
    mutating func append(event: Any) {
        items.append(.event(event))
    }

    /// Passes what was held to the handlers after `context`, in order (the
    /// reads before each event closed by a read-complete), and forgets it.
    mutating func release(after context: ChannelHandlerContext) {
        let released = items
        items = []
        var readSome = false
        for item in released {
            switch item {
            case .bytes(let bytes):
                context.fireChannelRead(NIOAny(bytes))
                readSome = true
            case .event(let event):
                if readSome { context.fireChannelReadComplete() }
                readSome = false
                context.fireUserInboundEventTriggered(event)
            }
        }
        if readSome { context.fireChannelReadComplete() }
    }

    /// The bytes held, in order, for a socket that leaves NIO (events are
    /// left behind: the socket reports its end again to whoever reads it next); forgets them.
    mutating func takeBytes() -> [UInt8] {
        var bytes: [UInt8] = []
        for case .bytes(let buffer) in items { bytes.append(contentsOf: buffer.readableBytesView) }
        items = []
        return bytes
    }

    /// Forgets what was held (the connection is closing).
    mutating func removeAll() {
        items = []
    }
}
