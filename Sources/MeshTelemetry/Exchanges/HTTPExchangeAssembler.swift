import MeshKernel

/// Pairs requests with responses on each connection end, from the kernel's
/// ``SocketIOEvent``s, and emits an ``HTTPExchange`` when a response ends.
///
/// Requests are answered in order (HTTP/1.1 pipelining), so each end keeps
/// a queue of requests awaiting their response. An end that sends requests
/// is a client; one that receives them, a server. When both ends of a
/// connection are watched, each reports the exchange once.
public struct HTTPExchangeAssembler: Sendable {
    /// Counts of what could not become an exchange.
    public struct Statistics: Sendable, Equatable {
        /// Exchanges emitted.
        public var exchanges = 0
        /// Responses that arrived with no request waiting.
        public var unmatchedResponses = 0
        /// Requests still waiting when their connection closed.
        public var unansweredRequests = 0
        /// Heads refused as not HTTP/1.
        public var invalidHeads = 0
        /// Connection ends being followed now.
        public var openConnections = 0
        /// Requests seen whose response has not ended yet.
        public var inFlight = 0

        /// All zero.
        public init() {}
    }

    private struct PendingRequest: Sendable {
        var head: HTTPRequestHead
        var start: UInt64
        var end: UInt64?
        var bytes = 0
    }

    private struct ConnectionEnd: Sendable {
        var outgoing = HTTPMessageStream()
        var incoming = HTTPMessageStream()
        var requests: [PendingRequest] = []
        /// The response being received or sent: its head and start.
        var response: (head: HTTPResponseHead, start: UInt64)?
        var reporter: HTTPExchange.Reporter?
        /// Switched to another protocol (101, or a tunnel after CONNECT): no longer HTTP/1.
        var upgraded = false
        var identity: UInt32 = 0
        var pid: UInt32 = 0
        var local = Endpoint(.loopback, port: 0)
        var remote = Endpoint(.loopback, port: 0)
    }

    private var connections: [UInt64: ConnectionEnd] = [:]
    /// What could not become an exchange, so far.
    public private(set) var statistics = Statistics()
    /// The most connection ends followed at once; the least recently
    /// created are dropped beyond it (their close was never seen).
    public let connectionLimit: Int
    /// Connection ends in order of creation from `oldest` on (earlier slots are spent).
    private var order: [UInt64] = []
    private var oldest = 0

    /// An assembler following at most `connectionLimit` connection ends.
    public init(connectionLimit: Int = 65_536) {
        self.connectionLimit = connectionLimit
    }

    /// Consumes one event; returns the exchanges it completed.
    public mutating func consume(_ event: SocketIOEvent) -> [HTTPExchange] {
        if event.kind == .close {
            guard var end = connections.removeValue(forKey: event.connection) else { return [] }
            var exchanges: [HTTPExchange] = []
            for streamEvent in end.incoming.close(timestamp: event.timestamp) {
                Self.handle(streamEvent, outgoing: false, connection: event.connection, &end, &statistics, &exchanges)
            }
            for streamEvent in end.outgoing.close(timestamp: event.timestamp) {
                Self.handle(streamEvent, outgoing: true, connection: event.connection, &end, &statistics, &exchanges)
            }
            statistics.unansweredRequests += end.requests.count
            statistics.inFlight -= end.requests.count
            statistics.invalidHeads += end.incoming.invalidHeads + end.outgoing.invalidHeads
            statistics.openConnections = connections.count
            return exchanges
        }
        if connections[event.connection] == nil { admit(event.connection) }
        var exchanges: [HTTPExchange] = []
        // In place: a copy of the entry would make every array in it copy on write.
        Self.process(event, &connections[event.connection, default: ConnectionEnd()], &statistics, &exchanges)
        return exchanges
    }

    /// Feeds one call to its direction's stream and pairs what comes out.
    private static func process(_ event: SocketIOEvent, _ end: inout ConnectionEnd, _ statistics: inout Statistics,
                                _ exchanges: inout [HTTPExchange]) {
        end.identity = event.identity
        end.pid = event.pid
        end.local = event.local
        end.remote = event.remote
        let outgoing = event.kind == .send
        if end.upgraded { return }
        // Whether a response head has a body depends on the request it answers:
        // the n-th response head of this call answers the n-th request still
        // waiting (after the one whose response is already under way).
        let streamEvents: [HTTPMessageStream.Event]
        do {
            let waiting = end.requests
            var answered = end.response == nil ? 0 : 1
            let hasBody: (HTTPHead) -> Bool = { head in
                guard case .response(let response) = head else { return true }
                // An interim (1xx) response answers nothing yet: the final one follows.
                if response.isInterim { return false }
                defer { answered += 1 }
                return response.hasBody(forRequestMethod: answered < waiting.count ? waiting[answered].head.method : nil)
            }
            if outgoing {
                streamEvents = end.outgoing.consume(length: event.length, data: event.data, tail: event.tail, timestamp: event.timestamp, hasBody: hasBody)
            } else {
                streamEvents = end.incoming.consume(length: event.length, data: event.data, tail: event.tail, timestamp: event.timestamp, hasBody: hasBody)
            }
        }
        for streamEvent in streamEvents { handle(streamEvent, outgoing: outgoing, connection: event.connection, &end, &statistics, &exchanges) }
    }

    /// Makes room for a new connection end.
    private mutating func admit(_ connection: UInt64) {
        // Drop the oldest ends still present (their close was lost); an index,
        // not removeFirst, so each admission costs O(1) amortized.
        while connections.count >= connectionLimit, oldest < order.count {
            if let dropped = connections.removeValue(forKey: order[oldest]) {
                statistics.unansweredRequests += dropped.requests.count
                statistics.inFlight -= dropped.requests.count
                statistics.invalidHeads += dropped.incoming.invalidHeads + dropped.outgoing.invalidHeads
            }
            oldest += 1
        }
        if order.count - oldest > 2 * connectionLimit || oldest > connectionLimit {
            order = order[oldest...].filter { connections[$0] != nil }
            oldest = 0
        }
        order.append(connection)
        statistics.openConnections = connections.count + 1
    }

    /// Which messages a direction carries: requests go out from clients and come in to servers.
    private static func handle(_ event: HTTPMessageStream.Event, outgoing: Bool, connection: UInt64,
                               _ end: inout ConnectionEnd, _ statistics: inout Statistics, _ exchanges: inout [HTTPExchange]) {
        switch event {
        case .head(.request(let head), let timestamp):
            end.reporter = outgoing ? .client : .server
            end.requests.append(PendingRequest(head: head, start: timestamp))
            statistics.inFlight += 1
        case .head(.response(let head), _) where head.isInterim:
            break   // 100 Continue, 103 Early Hints: the final response is still to come
        case .head(.response(let head), let timestamp):
            if end.requests.isEmpty {
                statistics.unmatchedResponses += 1
                end.response = nil
            } else {
                end.response = (head, timestamp)
            }
        case .lost:
            // A message this direction carried could not be followed. If it was a
            // response, its request will never be answered: drop it now, or every
            // later response would be paired with the request before its own.
            let carriesRequests = (end.reporter == .client) == outgoing
            if !carriesRequests, end.response == nil, !end.requests.isEmpty {
                end.requests.removeFirst()
                statistics.unansweredRequests += 1
                statistics.inFlight -= 1
            }
        case .end(let timestamp, let bytes):
            // The end of whichever message this direction is carrying: a request
            // if this direction carries requests, else the response.
            let carriesRequests = (end.reporter == .client) == outgoing
            if carriesRequests, let index = end.requests.firstIndex(where: { $0.end == nil }) {
                end.requests[index].end = timestamp
                end.requests[index].bytes = bytes
            } else if let response = end.response, !end.requests.isEmpty {
                let request = end.requests.removeFirst()
                end.response = nil
                // After 101 Switching Protocols, or a tunnel opened by CONNECT, the bytes are no longer HTTP/1.
                if response.head.status == 101 || (request.head.method == "CONNECT" && 200..<300 ~= response.head.status) {
                    end.upgraded = true
                }
                statistics.exchanges += 1
                statistics.inFlight -= 1
                exchanges.append(HTTPExchange(
                    reporter: end.reporter ?? .server, request: request.head, status: response.head.status,
                    requestStart: request.start, requestEnd: request.end ?? request.start,
                    responseStart: response.start, responseEnd: timestamp,
                    requestBytes: request.bytes, responseBytes: bytes,
                    local: end.local, remote: end.remote, identity: end.identity, pid: end.pid, connection: connection))
            }
        }
    }
}
