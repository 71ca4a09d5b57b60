import MeshKernel

/// The HTTP exchanges of a capture, as an `AsyncSequence`: the kernel's
/// events paired into requests and responses as they arrive.
public final class HTTPExchanges: AsyncSequence, Sendable {
    /// The kernel events this sequence reads.
    public let events: RingBufferRecords<SocketIOEvent>
    private let connectionLimit: Int

    init(events: RingBufferRecords<SocketIOEvent>, connectionLimit: Int) {
        self.events = events
        self.connectionLimit = connectionLimit
    }

    /// Stops reading; iteration ends after the events already read.
    public func finish() { events.finish() }

    /// The iterator. Only the first one reads (a ring buffer has one consumer).
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(events: events.makeAsyncIterator(), assembler: HTTPExchangeAssembler(connectionLimit: connectionLimit))
    }

    /// Pairs events into exchanges.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var events: RingBufferRecords<SocketIOEvent>.AsyncIterator
        /// The pairing state, with its statistics.
        public private(set) var assembler: HTTPExchangeAssembler
        var ready: [HTTPExchange] = []

        init(events: RingBufferRecords<SocketIOEvent>.AsyncIterator, assembler: HTTPExchangeAssembler) {
            self.events = events
            self.assembler = assembler
        }

        /// The next exchange, or nil when the events end.
        public mutating func next() async -> HTTPExchange? {
            while ready.isEmpty {
                guard let event = await events.next() else { return nil }
                ready = assembler.consume(event).reversed()
            }
            return ready.popLast()
        }
    }
}

extension HTTPCapture {
    /// The exchanges of the watched workloads (see ``events(bufferCapacity:pollInterval:)``).
    public func exchanges(bufferCapacity: Int = 65_536, pollInterval: Duration = .milliseconds(10),
                          connectionLimit: Int = 65_536) throws(BPFError) -> HTTPExchanges {
        HTTPExchanges(events: try events(bufferCapacity: bufferCapacity, pollInterval: pollInterval), connectionLimit: connectionLimit)
    }
}
