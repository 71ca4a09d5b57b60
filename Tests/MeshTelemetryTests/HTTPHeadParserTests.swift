import MeshTelemetry
import MeshTestSupport
import Testing

@Suite("HTTP/1 head parsing")
struct HTTPHeadParserTests {
    private func parse(_ text: String) -> HTTPHeadParser.Result { HTTPHeadParser.parse(Array(text.utf8)) }

    @Test("a token byte is exactly an RFC 9110 tchar, for every byte value")
    func tokenBytes() {
        let tchars = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(HTTPSyntax.isTokenByte(byte) == tchars.contains(byte), "byte \(byte)")
        }
    }

    @Test("an HTTP version is exactly HTTP/1.0 or HTTP/1.1, read alike from bytes in memory (one word) and from any other collection (byte by byte)")
    func versions() {
        let cases: [(String, Int?)] = [("HTTP/1.0", 0), ("HTTP/1.1", 1), ("HTTP/1.2", nil), ("HTTP/2.0", nil), ("http/1.1", nil),
                                       ("HTTP/1.", nil), ("HTTP/1.10", nil), (" HTTP/1.", nil), ("HTTP/1\u{0}1", nil), ("HTTQ/1.1", nil)]
        for (text, minor) in cases {
            let bytes = Array(text.utf8)
            #expect(HTTPSyntax.minorVersion(bytes) == minor, "\(text.debugDescription) in memory")
            #expect(HTTPSyntax.minorVersion(bytes.lazy.map { $0 }) == minor, "\(text.debugDescription) byte by byte")
            // A slice at an odd offset: the word is read unaligned.
            let shifted = [0x20] + bytes
            #expect(shifted.withUnsafeBytes { HTTPSyntax.minorVersion($0[1...]) } == minor, "\(text.debugDescription) unaligned")
        }
    }

    @Test("requests: method, target, Host, traceparent and framing")
    func requests() throws {
        let text = "POST /api/items?x=1 HTTP/1.1\r\nHost: shop.local\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nContent-Length: 5\r\n\r\nhello"
        guard case .complete(.request(let head), let length) = parse(text) else { Issue.record("not parsed: \(parse(text))"); return }
        #expect(head.method == "POST" && head.target == "/api/items?x=1" && head.path == "/api/items" && head.version == "HTTP/1.1")
        #expect(head.host == "shop.local")
        #expect(head.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        #expect(head.framing == .length(5))
        #expect(length == text.utf8.count - 5)
        guard case .complete(.request(let chunked), _) = parse("PUT /u HTTP/1.1\nTransfer-Encoding: gzip, chunked\n\n") else { Issue.record(); return }
        #expect(chunked.framing == .chunked, "bare LF line ends are accepted")
        guard case .complete(.request(let get), _) = parse("GET / HTTP/1.0\r\n\r\n") else { Issue.record(); return }
        #expect(get.framing == .length(0) && get.host == nil)
    }

    @Test("responses: status and framing; a body-less status has none")
    func responses() throws {
        guard case .complete(.response(let ok), _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n") else { Issue.record(); return }
        #expect(ok.status == 200 && ok.framing == .length(12))
        guard case .complete(.response(let open), _) = parse("HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\n") else { Issue.record(); return }
        #expect(open.framing == .untilClose)
        guard case .complete(.response(let empty), _) = parse("HTTP/1.1 204\r\n\r\n") else { Issue.record(); return }
        #expect(!empty.hasBody(forRequestMethod: "GET"))
        #expect(!ok.hasBody(forRequestMethod: "HEAD"))
        #expect(ok.hasBody(forRequestMethod: "GET"))
    }

    @Test("incomplete heads wait for more bytes; everything else that is not HTTP/1 is refused")
    func incompleteAndInvalid() {
        for prefix in ["G", "GET", "GET /", "GET / HTTP/1.1\r\nHost: a", "HTTP/1.", "HTTP/1.1 200 OK\r\n"] {
            #expect(parse(prefix) == .incomplete, "\(prefix)")
        }
        let invalid = [
            "\u{16}\u{03}\u{01}\u{02}\u{00}\u{01}\u{00}\u{01}\u{fc}\u{03}\u{03}",   // a TLS ClientHello
            "SSH-2.0-OpenSSH_9.2\r\n",
            "GET / HTTP/2.0\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n", "GET /a b HTTP/1.1\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "GET / HTTP/1.1\r\n folded\r\n\r\n", "GET / HTTP/1.1\r\nX: a\u{01}b\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n",
            "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 20_000) + "\r\n\r\n",
        ]
        for text in invalid { #expect(parse(text) == .invalid, "\(text.prefix(40))") }
    }

    @Test("thousands of random and mutated inputs: every result is complete, incomplete or invalid, never a crash")
    func fuzz() {
        var generator = SeededGenerator(seed: 0x5EED)   // the same inputs on every run
        let seeds = ["GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"].map { Array($0.utf8) }
        var complete = 0
        for round in 0..<5_000 {
            let bytes = seeds[round % seeds.count].mutated(edits: 1...4, using: &generator)
            if case .complete(_, let length) = HTTPHeadParser.parse(bytes) {
                #expect(length <= bytes.count)
                complete += 1
            }
        }
        #expect(complete > 0, "no mutation left a valid head: the parser refuses too much")
    }
}
