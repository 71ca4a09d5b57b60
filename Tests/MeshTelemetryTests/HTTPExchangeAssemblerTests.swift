import MeshKernel
import MeshTelemetry
import Testing

/// Builds the events the kernel would send for one connection end.
private struct Wire {
    var connection: UInt64 = 7
    var clock: UInt64 = 1_000
    let local = Endpoint(.loopback, port: 8080)
    let remote = Endpoint(.loopback, port: 40_000)

    /// A call of `text`, captured (as the kernel does for heads and short calls) or not.
    mutating func call(_ kind: SocketIOEvent.Kind, _ text: String, captured: Bool = true) -> SocketIOEvent {
        clock += 10
        let bytes = Array(text.utf8)
        return SocketIOEvent(kind: kind, timestamp: clock, connection: connection, pid: 1, identity: 9, length: bytes.count,
                             data: captured ? Array(bytes.prefix(512)) : [], tail: .init(bytes), local: local, remote: remote)
    }

    mutating func close() -> SocketIOEvent {
        clock += 10
        return SocketIOEvent(kind: .close, timestamp: clock, connection: connection, length: 0, local: local, remote: remote)
    }
}

@Suite("Pairing requests and responses from kernel events")
struct HTTPExchangeAssemblerTests {
    @Test("a server end: keep-alive, a body counted across uncaptured calls, timing from the calls")
    func serverKeepAlive() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        exchanges += assembler.consume(wire.call(.receive, "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, String(repeating: "b", count: 2000), captured: false))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"))
        #expect(exchanges.count == 1)
        let first = exchanges[0]
        #expect(first.reporter == .server && first.request.method == "POST" && first.status == 201)
        #expect(first.requestStart == 1_010 && first.requestEnd == 1_020 && first.responseStart == 1_030 && first.responseEnd == 1_030)
        #expect(first.requestBytes > 2000 && first.responseBytes == "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello".utf8.count)
        #expect(first.connection == 7 && first.identity == 9)
        exchanges += assembler.consume(wire.call(.receive, "GET /b HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.send, "5\r\nhello\r\n", captured: false))
        #expect(exchanges.count == 1, "a chunked body goes on until the zero-size chunk")
        exchanges += assembler.consume(wire.call(.send, "0\r\n\r\n", captured: false))
        #expect(exchanges.count == 2 && exchanges[1].request.target == "/b")
    }

    @Test("a client end: pipelined requests in one call, responses split and merged across calls, HEAD and 204 without bodies")
    func clientPipelining() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        exchanges += assembler.consume(wire.call(.send, "GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nDELETE /3 HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 200 OK\r\nContent-Len"))
        exchanges += assembler.consume(wire.call(.receive, "gth: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
        #expect(exchanges.map(\.request.target) == ["/1", "/2", "/3"])
        #expect(exchanges.map(\.status) == [200, 200, 204])
        #expect(exchanges.allSatisfy { $0.reporter == .client })
        #expect(assembler.statistics.exchanges == 3 && assembler.statistics.unmatchedResponses == 0)
    }

    @Test("a response delimited by the close ends at the close; requests left unanswered are counted")
    func untilClose() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        #expect(assembler.consume(wire.call(.send, "GET /old HTTP/1.0\r\n\r\n")).isEmpty)
        #expect(assembler.consume(wire.call(.receive, "HTTP/1.0 200 OK\r\n\r\nsome")).isEmpty)
        #expect(assembler.consume(wire.call(.receive, "more", captured: false)).isEmpty)
        let closed = assembler.consume(wire.close())
        #expect(closed.count == 1 && closed[0].responseEnd == wire.clock && closed[0].responseBytes == "HTTP/1.0 200 OK\r\n\r\nsomemore".utf8.count)
        wire.connection = 8
        _ = assembler.consume(wire.call(.send, "GET /never HTTP/1.1\r\n\r\n"))
        _ = assembler.consume(wire.close())
        #expect(assembler.statistics.unansweredRequests == 1)
        #expect(assembler.statistics.openConnections == 0)
    }

    @Test("garbage, a response without a request, and heads that are not HTTP/1 make no exchange")
    func garbage() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "GET / HTTP/9.9\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "\u{16}\u{03}\u{01}garbage", captured: false))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 400 Bad\r\n\r\n"))
        exchanges += assembler.consume(wire.close())
        #expect(exchanges.isEmpty)
        #expect(assembler.statistics.unmatchedResponses == 2)
        #expect(assembler.statistics.invalidHeads == 1)
    }

    @Test("interim responses wait for the final one; after 101 Switching Protocols the connection is no longer followed")
    func interimAndUpgrade() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        exchanges += assembler.consume(wire.call(.receive, "PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 100 Continue\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "abc"))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
        #expect(exchanges.map(\.status) == [201])
        exchanges += assembler.consume(wire.call(.receive, "GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"))
        // WebSocket frames that happen to look like HTTP are not HTTP any more.
        exchanges += assembler.consume(wire.call(.receive, "GET /not-http HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.send, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        #expect(exchanges.map(\.status) == [201, 101])
        #expect(assembler.statistics.unmatchedResponses == 0)
    }

    @Test("a chunked body whose last chunk is split across calls ends where it ends")
    func chunkedTerminatorSplit() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        exchanges += assembler.consume(wire.call(.send, "GET /stream HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "a\r\n0123456789\r\n0\r", captured: false))
        #expect(exchanges.isEmpty)
        exchanges += assembler.consume(wire.call(.receive, "\n\r\n", captured: false))
        #expect(exchanges.count == 1)
        exchanges += assembler.consume(wire.call(.send, "GET /next HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 204 No Content\r\n\r\n"))
        #expect(exchanges.map(\.request.target) == ["/stream", "/next"])
    }

    @Test("a head longer than the capture keeps its start line; a lost response head does not shift the pairing")
    func truncatedAndLostHeads() {
        var wire = Wire()
        var assembler = HTTPExchangeAssembler()
        var exchanges: [HTTPExchange] = []
        let cookie = "Cookie: " + String(repeating: "c", count: 900) + "\r\n"
        // A request head of ~950 bytes in one call: the kernel copied its first 512.
        let long = "GET /long HTTP/1.1\r\nHost: h\r\n" + cookie + "\r\n"
        var event = wire.call(.send, long)
        event.data = Array(event.data.prefix(512))
        exchanges += assembler.consume(event)
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        // The next request, cut off too (the same long cookie on every request), ends the first one.
        var again = wire.call(.send, long.replacingOccurrences(of: "/long", with: "/again"))
        again.data = Array(again.data.prefix(512))
        exchanges += assembler.consume(again)
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
        // A whole next request ends the cut-off one; it is paired with its own response.
        exchanges += assembler.consume(wire.call(.send, "GET /after HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        #expect(exchanges.map(\.request.target) == ["/long", "/again", "/after"])
        #expect(exchanges.map(\.status) == [200, 201, 404])
        // A response the kernel did not capture (lost): its request is dropped, not paired with the next response.
        exchanges += assembler.consume(wire.call(.send, "GET /lost HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "garbage that is not a head", captured: false))
        exchanges += assembler.consume(wire.call(.send, "GET /found HTTP/1.1\r\n\r\n"))
        exchanges += assembler.consume(wire.call(.receive, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"))
        #expect(exchanges.last?.request.target == "/found" && exchanges.last?.status == 202)
        #expect(assembler.statistics.unansweredRequests == 1)
    }

    @Test("the connection limit drops the oldest ends instead of growing without bound")
    func connectionLimit() {
        var assembler = HTTPExchangeAssembler(connectionLimit: 4)
        var wire = Wire()
        for connection in 1...10 as ClosedRange<UInt64> {
            wire.connection = connection
            _ = assembler.consume(wire.call(.send, "GET /\(connection) HTTP/1.1\r\n\r\n"))
        }
        #expect(assembler.statistics.openConnections <= 4)
        wire.connection = 10
        #expect(assembler.consume(wire.call(.receive, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).count == 1)
    }
}
