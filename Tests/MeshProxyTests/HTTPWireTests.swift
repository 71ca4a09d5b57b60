import MeshTestSupport
import NIOCore
import Testing
@testable import MeshProxy

/// Parses `text` as a request head (it must be exactly one head).
private func request(_ text: String) throws(HTTPWireError) -> HTTPWireHead {
    try HTTPWireHead.request(ByteBuffer(string: text))
}

/// How a chunked body scans when its bytes arrive in pieces cut at `cuts`.
private func scanChunked(_ body: [UInt8], cuts: [Int]) throws(HTTPWireError) -> (consumed: Int, complete: Bool) {
    var framing = HTTPWireBody.chunked(ChunkedBodyScanner())
    var consumed = 0
    var start = 0
    for end in cuts + [body.count] where end > start {
        let piece = ByteBuffer(bytes: body[start..<end])
        let (count, complete) = try framing.advance(over: piece)
        consumed += count
        if complete { return (consumed, true) }
        start = end
    }
    return (consumed, false)
}

@Suite("HTTP/1.1 heads and body framing, byte by byte")
struct HTTPWireTests {
    @Test("a head's end is found however its bytes arrive, each byte looked at once; empty lines before the request line belong to it")
    func headLength() {
        let text = Array("\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nNEXT".utf8)
        var buffer = ByteBuffer()
        var scanned = 0
        var found: Int?
        for byte in text {
            buffer.writeInteger(byte)
            if let length = HTTPWireHead.length(in: buffer, scanned: &scanned) {
                found = length
                break
            }
            // Not found yet: the next search starts after the bytes looked at.
            #expect(scanned == max(buffer.readableBytes, 3))
        }
        #expect(found == text.count - 4)
        var whole = ByteBuffer(bytes: text)
        scanned = 0
        #expect(HTTPWireHead.length(in: whole, scanned: &scanned) == text.count - 4)
        whole.moveReaderIndex(forwardBy: text.count - 4)
        scanned = 0
        #expect(HTTPWireHead.length(in: whole, scanned: &scanned) == nil)
    }

    @Test("a valid request head: start line, fields as sent, values trimmed, case-insensitive lookup, comma tokens")
    func validRequest() throws {
        let head = try request("\r\nPOST /api?q=1 HTTP/1.0\r\nHost: shop:8080\r\nX-Two:  a, B ,, c \r\nx-two: d\r\nContent-Length: 3\r\n\r\n")
        #expect(head.method == "POST" && head.target == "/api?q=1" && head.minorVersion == 0)
        #expect(head.fields.map(head.name(of:)) == ["Host", "X-Two", "x-two", "Content-Length"])
        #expect(head.fields.map(\.known) == [.host, nil, nil, .contentLength])
        #expect(head.value(.host) == "shop:8080" && head.value(named: "host") == "shop:8080")
        #expect(head.value(named: "x-two") == "a, B ,, c" && head.value(named: "absent") == nil && head.value(.connection) == nil)
        #expect(head.soleValue(named: "x-two") == ("a, B ,, c", true) && head.soleValue(named: "host") == ("shop:8080", false))
        #expect(head.soleValue(named: "absent") == (nil, false) && head.count(.host) == 1)
        let twoHosts = try request("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")
        #expect(twoHosts.soleValue(named: "host") == ("a", true), "a known name repeated")
        let connection = try request("GET / HTTP/1.1\r\nHost: h\r\nConnection:  a, B ,, c \r\nconnection: d\r\n\r\n")
        #expect(connection.tokens(.connection) == ["a", "b", "c", "d"])
        #expect(connection.hasToken(.connection, "b") && connection.hasToken(.connection, "d") && !connection.hasToken(.connection, "a, b"))
        #expect(try HTTPWireBody.request(head).isLength(3))
    }

    @Test("a head given back is parsed into again only when nothing else holds it: the holder's head never changes under it")
    func reusedHeads() throws {
        var spare: HTTPWireHead? = try HTTPWireHead.request(ByteBuffer(string: "GET /first HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nConnection: close\r\nX-Two: 2\r\n\r\n"))
        let first = ObjectIdentifier(spare!)
        let second = try HTTPWireHead.request(ByteBuffer(string: "POST /second HTTP/1.0\r\nHost: b\r\n\r\n"), reusing: &spare)
        #expect(spare == nil)
        #expect(ObjectIdentifier(second) == first, "the spare, refilled")
        #expect(second.method == "POST" && second.target == "/second" && second.minorVersion == 0)
        #expect(second.fields.count == 1 && second.value(.host) == "b" && second.value(named: "x-one") == nil)
        #expect(!second.contains(.connection) && second.count(.host) == 1, "the known names are the new head's")
        #expect(String(buffer: second.bytes) == "POST /second HTTP/1.0\r\nHost: b\r\n\r\n")
        // Held elsewhere too (as a request's timeline may hold it): a new head, and the held one as it was.
        spare = second
        let third = try HTTPWireHead.response(ByteBuffer(string: "HTTP/1.1 204 No Content\r\nX-Three: 3\r\n\r\n"), reusing: &spare)
        #expect(spare == nil && third !== second)
        #expect(third.status == 204 && third.value(named: "x-three") == "3")
        #expect(second.method == "POST" && second.value(.host) == "b" && second.fields.count == 1)
        // Nor when the parse fails.
        spare = third
        #expect(throws: HTTPWireError.self) { try HTTPWireHead.response(ByteBuffer(string: "HTTP/1.1 2x4 No\r\n\r\n"), reusing: &spare) }
        #expect(third.status == 204 && third.value(named: "x-three") == "3")
        // A spare held by nothing else that a failed parse took is gone; the next head is whole.
        spare = try HTTPWireHead.response(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        #expect(throws: HTTPWireError.self) { try HTTPWireHead.response(ByteBuffer(string: "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"), reusing: &spare) }
        #expect(spare == nil)
        let fourth = try HTTPWireHead.response(ByteBuffer(string: "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"), reusing: &spare)
        #expect(fourth.status == 304 && fourth.fields.count == 1 && !fourth.contains(.contentLength))
        // A request head keeps a copy of its bytes (the buffer they were read into is the next read's), refilled in place;
        // a response head keeps them where they lie, until it lets go of them.
        let read = ByteBuffer(string: "GET /copied HTTP/1.1\r\nHost: a\r\n\r\n")
        var request: HTTPWireHead? = try HTTPWireHead.request(read)
        #expect(request?.bytes == read && request?.bytes.storageAddress != read.storageAddress)
        let storage = request?.bytes.storageAddress
        let again = try HTTPWireHead.request(ByteBuffer(string: "GET /again HTTP/1.1\r\nHost: b\r\n\r\n"), reusing: &request)
        #expect(again.target == "/again" && again.bytes.storageAddress == storage, "the copy is made in the spare's storage")
        let response = ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        let responseHead = try HTTPWireHead.response(response)
        #expect(responseHead.bytes.storageAddress == response.storageAddress)
        responseHead.letGoOfBytes()
        #expect(responseHead.bytes.readableBytes == 0 && responseHead.fields.isEmpty && responseHead.status == 200)
    }

    @Test("every known field name has its bit in a set of known names")
    func knownNamesFit() {
        #expect(HTTPWireField.Name.allCases.count <= UInt16.bitWidth)
        #expect(HTTPWireField.Name.allCases.allSatisfy { HTTPWireField.KnownNames($0).contains($0) })
    }

    @Test("a head knows which of the proxy's names its fields have, and which more than once: counts, lookups and tokens agree with its fields")
    func headKnownNames() throws {
        let head = try HTTPWireHead.request(ByteBuffer(string:
            "GET / HTTP/1.1\r\nHOST: a\r\nX-Other: 1\r\nConnection: keep-alive, Upgrade\r\nhost: b\r\nUpgrade: h2c\r\nHost: c\r\n\r\n"))
        #expect(head.count(.host) == 3 && head.count(.connection) == 1 && head.count(.contentLength) == 0)
        #expect(head.contains(.upgrade) && !head.contains(.expect) && !head.contains(.transferEncoding))
        #expect(head.value(.host) == "a" && head.value(.expect) == nil && head.value(named: "x-other") == "1")
        #expect(head.soleValue(named: "host") == ("a", true) && head.soleValue(named: "upgrade") == ("h2c", false))
        #expect(head.soleValue(named: "expect") == (nil, false) && head.soleValue(named: "x-other") == ("1", false))
        #expect(head.tokens(.connection) == ["keep-alive", "upgrade"] && head.tokens(.te).isEmpty)
        #expect(head.containsAny(of: HTTPWireField.KnownNames(.expect, .upgrade)) && !head.containsAny(of: HTTPWireField.KnownNames(.te, .expect)))
        let one = try HTTPWireHead.request(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        #expect(one.count(.host) == 1 && one.soleValue(named: "host") == ("a", false) && one.count(.upgrade) == 0)
        let union = HTTPWireField.KnownNames(.te).union(HTTPWireField.KnownNames(.expect))
        #expect(union.contains(.te) && union.contains(.expect) && !union.contains(.host))
    }

    @Test("the header names the proxy reads are recognized in any case and only those; hop-by-hop sets hold known and other names")
    func knownNames() throws {
        for name in HTTPWireField.Name.allCases {
            let lowercased = name.spelling.description
            #expect(HTTPWireField.Name.recognizing(lowercased.utf8) == name)
            #expect(HTTPWireField.Name.recognizing(lowercased.uppercased().utf8) == name)
            #expect(HTTPWireField.Name(lowercased: lowercased) == name)
            // One letter off, or one longer: not the name.
            #expect(HTTPWireField.Name.recognizing((lowercased.dropLast() + "_").utf8) == nil)
            #expect(HTTPWireField.Name.recognizing((lowercased + "s").utf8) == nil)
        }
        let head = try request("GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Private, keep-alive, Host\r\nKeep-Alive: 5\r\nx-private: 1\r\nX-Other: 2\r\n\r\n")
        let dropped = head.hopByHop(HTTPWireField.Names(.connection, .te), keeping: HTTPWireField.Names(.host))
        #expect(head.fields.map { dropped.contains($0, of: head) } == [false, true, true, true, false])
        // Known names in Connection, in any case: the kept ones stay, the others go; an unknown one goes by name.
        let mixed = try request("POST / HTTP/1.1\r\nHost: h\r\nConnection: CONTENT-LENGTH, tE, X-Private\r\nContent-Length: 0\r\nTE: trailers\r\nX-PRIVATE: 1\r\n\r\n")
        let mixedDropped = mixed.hopByHop(HTTPWireField.Names(.connection), keeping: HTTPWireField.Names(.host, .contentLength))
        #expect(mixed.fields.map { mixedDropped.contains($0, of: mixed) } == [false, true, false, true, true])
        #expect(mixed.hasToken(.connection, "te") && mixed.hasToken(.connection, "content-length") && !mixed.hasToken(.connection, "close"))
    }

    @Test("malformed request heads are refused with a reason, each kind that could be read two ways")
    func malformedRequests() throws {
        let cases = [
            "GET /a HTTP/1.1\nHost: h\r\n\r\n",               // bare LF
            "GET /a HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",        // bare CR
            "GET /a HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",   // obs-fold
            "GET /a HTTP/1.1\r\nHost : h\r\n\r\n",             // space before the colon
            "GET /a HTTP/1.1\r\n: h\r\n\r\n",                  // no name
            "GET /a HTTP/1.1\r\nNo colon\r\n\r\n",
            "G(T /a HTTP/1.1\r\nHost: h\r\n\r\n",              // not a token
            "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",            // space in the target
            "GET  /a HTTP/1.1\r\nHost: h\r\n\r\n",             // two spaces
            "GET /a HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET /a http/1.1\r\nHost: h\r\n\r\n",
            "GET /a HTTP/1.1\r\nX: a\u{1}b\r\n\r\n",           // control character
            "GET /a HTTP/1.1\r\nX: a\u{7f}\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\n",                  // no end
            "\r\n\r\n",
        ]
        for text in cases {
            #expect(throws: HTTPWireError.self, "\(text.debugDescription)") { try request(text) }
        }
        // Values are checked in one pass over many bytes at a time: a bad byte anywhere in a long one is found;
        // tabs and obs-text are values' bytes.
        let long = String(repeating: "v", count: 100)
        for position in [0, 1, 31, 32, 63, 64, 98, 99] {
            for bad: Character in ["\u{0}", "\u{8}", "\u{1b}", "\u{1f}", "\u{7f}"] {
                var value = Array(long)
                value[position] = bad
                #expect(throws: HTTPWireError.self, "\(bad.debugDescription) at \(position)") { try request("GET / HTTP/1.1\r\nX: \(String(value))\r\n\r\n") }
            }
        }
        #expect(try request("GET / HTTP/1.1\r\nX: \(long)\ta\u{80}\u{ff}é\r\n\r\n").value(named: "x") == "\(long)\ta\u{80}\u{ff}é")
    }

    @Test("request framing refuses what a smuggler could make two servers read differently")
    func requestFraming() throws {
        let refused = [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "TRACE / HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: \r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: ,\r\n\r\n",
        ]
        for text in refused {
            let head = try request(text)
            #expect(throws: HTTPWireError.self, "\(text.debugDescription)") { try HTTPWireBody.request(head) }
        }
        #expect(try HTTPWireBody.request(request("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n")).isLength(3))
        #expect(try HTTPWireBody.request(request("GET / HTTP/1.1\r\n\r\n")).isLength(0))
        #expect(try HTTPWireBody.request(request("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")).isChunked)
    }

    @Test("response framing: none after HEAD and for 1xx, 204, 304; chunked last; any other coding or no length until close")
    func responseFraming() throws {
        func framing(_ text: String, method: String = "GET") throws -> HTTPWireBody {
            try HTTPWireBody.response(HTTPWireHead.response(ByteBuffer(string: text)), toRequestMethod: method)
        }
        #expect(try framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method: "HEAD").isLength(0))
        #expect(try framing("HTTP/1.1 204 No Content\r\n\r\n").isLength(0))
        #expect(try framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").isLength(0))
        #expect(try framing("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n").isLength(0))
        #expect(try framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n").isChunked)
        #expect(try framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").isUntilClose)
        #expect(try framing("HTTP/1.0 200 OK\r\n\r\n").isUntilClose)
        #expect(try framing("HTTP/1.1 200 \r\nContent-Length: 7\r\n\r\n").isLength(7))
        #expect(try framing("HTTP/1.1 200\r\nContent-Length: 7\r\n\r\n").isLength(7))
        #expect(throws: HTTPWireError.self) { try framing("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n") }
        #expect(throws: HTTPWireError.self) { try framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 7\r\n\r\n") }
        for bad in ["HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "ICY 200 OK\r\n\r\n"] {
            #expect(throws: HTTPWireError.self, "\(bad.debugDescription)") { try HTTPWireHead.response(ByteBuffer(string: bad)) }
        }
    }

    @Test("a chunked body's end is found wherever its bytes are cut, extensions and trailers included; what follows is left")
    func chunkedEnd() throws {
        let body = Array("4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\n".utf8)
        let next = Array("GET /next HTTP/1.1\r\n\r\n".utf8)
        let whole = try scanChunked(body + next, cuts: [])
        #expect(whole.consumed == body.count && whole.complete)
        for cut in 1..<body.count {
            let split = try scanChunked(body + next, cuts: [cut])
            #expect(split.consumed == body.count && split.complete, "cut at \(cut)")
        }
        var everyByte = Array(1..<body.count)
        everyByte.append(body.count)
        #expect(try scanChunked(body, cuts: everyByte) == (body.count, true))
        #expect(try scanChunked(Array("0\r\n\r\n".utf8), cuts: []) == (5, true))
        #expect(try scanChunked(Array("5\r\nhel".utf8), cuts: []) == (6, false))
    }

    @Test("malformed chunked bodies are refused: data longer than its size, bad sizes, bare line feeds")
    func chunkedMalformed() {
        for text in ["5\r\nhelloX\r\n0\r\n\r\n", "g\r\n", "\r\n", "5\nhello\r\n", "5\r\nhello\n0\r\n\r\n", "1234567890abcdef0\r\n",
                     "0\r\nX: y\n\r\n", "0\r\n\n", "5\u{1}\r\nhello\r\n"] {
            #expect(throws: HTTPWireError.self, "\(text.debugDescription)") { try scanChunked(Array(text.utf8), cuts: []) }
        }
    }

    @Test("thousands of mutated heads and chunked bodies, cut at random places: an answer or a refusal, never a crash or a claim past the input")
    func fuzz() {
        var generator = SeededGenerator(seed: 0xC0FFEE)
        let heads = ["GET /a HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"].map { Array($0.utf8) }
        let body = Array("4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\nT: v\r\n\r\n".utf8)
        var outcomes = [0, 0]
        for round in 0..<4_000 {
            let bytes = (round % 3 == 2 ? body : heads[round % 3]).mutated(edits: 1...4, using: &generator)
            if round % 3 == 2 {
                let cut = Int.random(in: 0...bytes.count, using: &generator)
                if let result = try? scanChunked(bytes, cuts: [cut]) {
                    #expect(result.consumed <= bytes.count)
                    outcomes[0] += 1
                } else {
                    outcomes[1] += 1
                }
            } else {
                var buffer = ByteBuffer(bytes: bytes)
                var scanned = 0
                guard let length = HTTPWireHead.length(in: buffer, scanned: &scanned) else { continue }
                #expect(length <= bytes.count)
                let head = buffer.readSlice(length: length)!
                let parsed = round % 3 == 0 ? (try? HTTPWireHead.request(head)) != nil : (try? HTTPWireHead.response(head)) != nil
                outcomes[parsed ? 0 : 1] += 1
            }
        }
        #expect(outcomes[0] > 100 && outcomes[1] > 100, "the mutations reached too few outcomes: \(outcomes)")
    }
}

extension HTTPWireBody {
    fileprivate func isLength(_ expected: Int) -> Bool { if case .length(let left) = self { left == expected } else { false } }
    fileprivate var isUntilClose: Bool { if case .untilClose = self { true } else { false } }
}

extension ByteBuffer {
    /// Where the buffer's bytes (its slice of its storage) begin: two buffers with the same address share storage.
    fileprivate var storageAddress: UnsafeRawPointer? { withVeryUnsafeBytes { $0.baseAddress } }
}
