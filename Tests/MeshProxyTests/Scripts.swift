// Real peers the proxy tests run, as Python scripts.

import Foundation
import MeshTestSupport

/// Echoes each connection `server` accepts until the client's half-close,
/// then answers "bye" and closes (Python, the end of the echo servers below).
private let echoServing = #"""
def serve(connection):
    while True:
        data = connection.recv(65536)
        if not data: break
        connection.sendall(data)
    connection.sendall(b"bye"); connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// An echo server on 127.0.0.1:PORT (or ADDRESS PORT): echoes each connection
/// until the client's half-close, then answers "bye" and closes.
let echoServer = #"""
import socket, sys, threading
address, port = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else ("127.0.0.1", int(sys.argv[1]))
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind((address, port)); server.listen(64)

"""# + echoServing

/// ``echoServer`` on 127.0.0.1:PORT that takes its first connection late:
/// its accept queue (of one) is held full by a connection of its own until
/// the kernel has dropped a connecting SYN for want of room (TcpExt
/// ListenOverflows rose), so that connect waits for its retry (about 1 s).
let lateAcceptingEchoServer = #"""
import socket, sys, threading, time
port = int(sys.argv[1])
def overflows():
    lines = open("/proc/net/netstat").read().splitlines()
    for names, values in zip(lines[0::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(values.split()[names.split().index("ListenOverflows")])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", port)); server.listen(0)
filler = socket.create_connection(("127.0.0.1", port))
before = overflows()
deadline = time.monotonic() + 30
while overflows() == before and time.monotonic() < deadline: time.sleep(0.01)
server.accept()[0].close(); filler.close()

"""# + echoServing

/// Reads a socket to its end (Python, for the scripts below).
private let readToEnd = #"""
def read_to_end(s):
    received = b""
    while True:
        data = s.recv(65536)
        if not data: return received
        received += data

"""#

/// Connects to HOST PORT, sends SIZE random bytes, half-closes, reads to the
/// end; prints "ok" if it got its bytes back followed by "bye" — and, with a
/// fourth argument `timed`, the seconds the exchange took.
let echoClient = readToEnd + #"""
import os, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timed = sys.argv[4:] == ["timed"]
payload = os.urandom(size)
start = time.monotonic()
s = socket.create_connection((host, port), timeout=30 if timed else 10)
s.sendall(payload); s.shutdown(socket.SHUT_WR)
received = read_to_end(s)
verdict = "ok" if received == payload + b"bye" else "mismatch %d of %d" % (len(received), size + 3)
print(verdict, time.monotonic() - start, flush=True) if timed else print(verdict, flush=True)
"""#

/// The file held clients (`holdingClient`) wait for, in a folder of the
/// test's own: ``give()`` creates it, ``remove()`` deletes the folder.
struct GoSignal {
    let path: String
    private let directory: URL

    init() throws {
        directory = try makeTemporaryDirectory("go")
        path = directory.appendingPathComponent("go").path
    }

    /// Lets the held clients go on.
    func give() -> Bool { FileManager.default.createFile(atPath: path, contents: nil) }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

/// Holds a connection open through the proxy: connects to HOST PORT, checks
/// one echo, waits until the file GO exists (the test changes things
/// meanwhile), then sends more, half-closes and prints "ok" if all of it
/// came back followed by "bye". Prints "connected" once the first echo is back.
let holdingClient = readToEnd + #"""
import os, socket, sys, time
host, port, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=20)
s.sendall(b"hello"); first = s.recv(5)
print("connected" if first == b"hello" else "no echo %r" % first, flush=True)
deadline = time.time() + 20
while not os.path.exists(go) and time.time() < deadline: time.sleep(0.01)
s.sendall(b"world"); s.shutdown(socket.SHUT_WR)
rest = read_to_end(s)
print("ok" if rest == b"worldbye" else "got %r" % rest, flush=True)
"""#

/// Opens COUNT connections to HOST PORT one after the other, each echoing one
/// byte; prints "<accepted> <seconds>" (a refused connection is closed at once).
let connectionBurst = #"""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
accepted, start = 0, time.monotonic()
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(b"x"); s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(100)
            if not chunk: break
            data += chunk
        accepted += data == b"xbye"
    except OSError:
        pass
    s.close()
print(accepted, time.monotonic() - start, flush=True)
"""#

/// Listens on 127.0.0.1:PORT for a minute, accepting nothing: a port no
/// other listener can take.
let portSquatter = #"""
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)
"""#

/// Until the file STOP exists (at most 60 s): connects to 127.0.0.1:PORT
/// again and again, and on each connection sends "x", half-closes and reads
/// to the end; prints how many connections were echoed ("xbye", an
/// `echoServer`'s answer) — served, that is, by whoever accepted them.
/// Creates the file READY as it starts.
let echoProber = readToEnd + #"""
import os, socket, sys, time
port, stop, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
open(ready, "w").close()
served, deadline = 0, time.time() + 60
while not os.path.exists(stop) and time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"x"); s.shutdown(socket.SHUT_WR)
        if read_to_end(s) == b"xbye": served += 1
        s.close()
    except OSError:
        pass
print(served, flush=True)
"""#

/// A server that reads a request to its end (the client's half-close) — or,
/// with a third argument `first-byte`, its first byte only — then sends SIZE
/// bytes and closes at once.
let bulkServer = #"""
import socket, sys, threading
port, size, first_byte = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["first-byte"]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", port)); server.listen(16)
def serve(connection):
    if first_byte: connection.recv(1)
    else:
        while connection.recv(65536): pass
    connection.sendall(b"z" * size); connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// Sends a byte to HOST PORT, half-closes, waits a second before reading (a
/// slow reader), then reads to the end; prints how many bytes arrived. With
/// NAME and CAFILE, over TLS to server name NAME trusting CAFILE, without the half-close.
let slowReader = readToEnd + #"""
import socket, ssl, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
if len(sys.argv) > 3:
    s = ssl.create_default_context(cafile=sys.argv[4]).wrap_socket(s, server_hostname=sys.argv[3]); s.sendall(b"x")
else:
    s.sendall(b"x"); s.shutdown(socket.SHUT_WR)
time.sleep(1)
print(len(read_to_end(s)), flush=True)
"""#

/// A sink on 127.0.0.1:PORT: reads SIZE bytes from each connection, answers
/// "done", then reads to the end and closes.
let sinkServer = #"""
import socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", port)); server.listen(16)
def serve(connection):
    got = 0
    while got < size:
        data = connection.recv(65536)
        if not data: break
        got += len(data)
    connection.sendall(b"done")
    while connection.recv(65536): pass
    connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// Sends SIZE bytes to HOST PORT and waits for "done" — with no half-close,
/// so nothing is read at end-of-stream speed; prints "done <seconds>".
let sinkClient = #"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
s = socket.create_connection((host, port), timeout=30)
s.sendall(b"y" * size)
answer = s.recv(4)
print(answer.decode(), time.monotonic() - start, flush=True)
s.close()
"""#

/// The built `mesh-proxy` example program.
let meshProxyProgram = buildProductsDirectory.appendingPathComponent("mesh-proxy").path

/// Starts ``namedHTTPServer`` on 127.0.0.1:`port` answering as `name`, and
/// returns it once it listens (the caller stops it).
func startNamedHTTPServer(port: Int, name: String) async throws -> Background {
    try await startServer(namedHTTPServer, named: "namedHTTPServer", port: port, arguments: [name])
}

/// Starts the Python server `script` with arguments `port` and `arguments`,
/// and returns it once it listens on 127.0.0.1:`port` (the caller stops it).
func startServer(_ script: String, named name: String, port: Int, arguments: [String] = []) async throws -> Background {
    let server = try Background(["python3", "-c", script, String(port)] + arguments)
    guard try await awaitListeners(["127.0.0.1:\(port)"]) else {
        server.stop()
        throw SubprocessError.timedOut(command: "\(name) on port \(port) to listen")
    }
    return server
}

/// Runs ``integrityClient`` through the proxy's 127.0.0.1:`port` (HTTPS, with
/// `tls`'s CA file and server name) to an ``integrityServer``: 4 connections
/// of 30 requests, with a fixed seed. Returns its verdict.
func checkBodyIntegrity(port: UInt16, tls: (caPath: String, serverName: String)? = nil) async throws -> String {
    let arguments = ["127.0.0.1", String(port), "4", "30", "20261128"] + (tls.map { [$0.caPath, $0.serverName] } ?? [])
    return try await offload { try run(["python3", "-c", integrityClient] + arguments).check().output }
        .trimmingCharacters(in: .whitespacesAndNewlines)
}

/// An HTTP/1.1 server on 127.0.0.1:PORT (or PORT NAME ADDRESS) that answers
/// every request with "NAME PATH BODYLENGTH" (keep-alive, Content-Length
/// framed), or, for /bytes/N, with N bytes.
let namedHTTPServer = #"""
import http.server, sys
port, name = int(sys.argv[1]), sys.argv[2]
address = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length: self.rfile.read(length)
        body = b"z" * int(self.path[7:]) if self.path.startswith("/bytes/") else ("%s %s %d" % (name, self.path, length)).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer.request_queue_size = 128   # (5 by default: a burst of connections would wait for SYNs sent again)
http.server.ThreadingHTTPServer((address, port), Handler).serve_forever()
"""#

/// Sends raw bytes (a Python bytes expression written by the test) to HOST PORT, optionally waits,
/// reads until the connection closes or 3 s pass; prints the status codes it got
/// and "closed", "open" or the error's name (`statusesToEnd`).
let rawHTTPClient = statusesToEnd + #"""
import sys, time
host, port, payload, pause = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), float(sys.argv[4])   # the test's own expression
s = socket.create_connection((host, port), timeout=30)
s.sendall(payload)   # (within 30 s: a large payload goes at the proxy's pace)
s.settimeout(3)
time.sleep(pause)
print(statuses_to_end(s), flush=True)
"""#

/// An HTTPS server on 127.0.0.1:PORT with CERT and KEY, answering every GET
/// with "tls PATH" (keep-alive).
let httpsServer = #"""
import http.server, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"tls " + self.path.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""#

/// Holds one HTTPS keep-alive connection to HOST PORT with server name NAME,
/// trusting CAFILE: GET /1, prints "connected", waits until the file GO
/// exists, GET /2 on the same connection; prints both statuses and the
/// common name of the certificate the connection was made with.
let holdingTLSClient = #"""
import os, socket, ssl, sys, time
host, port, name, cafile, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=cafile)
s = context.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname=name)
def get(path):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + name.encode() + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data: data += s.recv(4096)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(rest) < length: rest += s.recv(4096)
    return head.split(b" ")[1].decode()
common_name = dict(entry[0] for entry in s.getpeercert()["subject"])["commonName"]
first = get(b"/1"); print("connected", flush=True)
deadline = time.time() + 20
while not os.path.exists(go) and time.time() < deadline: time.sleep(0.01)
print(first, get(b"/2"), common_name, flush=True)
"""#

/// Over TLS to HOST PORT with server name NAME, trusting CAFILE: sends SIZE
/// random bytes in pieces and reads each piece's echo; prints "ok" if every byte came back.
let tlsEchoClient = #"""
import os, socket, ssl, sys
host, port, name, cafile, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
context = ssl.create_default_context(cafile=cafile)
s = context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=name)
sent = received = b""
while len(sent) < size:
    piece = os.urandom(min(16384, size - len(sent))); s.sendall(piece); sent += piece
    while len(received) < len(sent):
        data = s.recv(65536)
        if not data: break
        received += data
print("ok" if received == sent else "mismatch %d of %d" % (len(received), size), flush=True)
"""#

/// A listener on 127.0.0.1:PORT that never accepts: its accept queue (of
/// one) is held full by a connection of its own, so the kernel drops every
/// other SYN and connects to it time out.
let fullBacklogServer = #"""
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(0)
filler = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True: time.sleep(60)
"""#

/// A broken upstream on 127.0.0.1:PORT: accepts each connection (printing
/// "accepted"), reads what comes, and closes it without answering.
let closingServer = #"""
import socket, sys
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(64)
while True:
    connection, _ = server.accept()
    print("accepted", flush=True)
    connection.settimeout(1)
    try: connection.recv(65536)
    except OSError: pass
    connection.close()
"""#

/// With Python's strict http.client, on one connection to HOST PORT: HEAD
/// PATH1, then GET PATH2; prints each status and body length. A body sent
/// after the HEAD answer would break the second exchange.
let headThenGetClient = #"""
import http.client, sys
host, port, first, second = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
connection = http.client.HTTPConnection(host, port, timeout=5)
connection.request("HEAD", first); answer = connection.getresponse(); body = answer.read()
print(answer.status, len(body), end=" ")
connection.request("GET", second); answer = connection.getresponse(); body = answer.read()
print(answer.status, body.decode(), flush=True)
"""#

/// Sends the bytes (a Python bytes expression written by the test) to HOST
/// PORT, half-closes, and prints the status lines of everything that comes
/// back before the connection closes.
let halfClosingHTTPClient = #"""
import re, socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])   # the test's own expression
s = socket.create_connection((host, port), timeout=5)
s.sendall(payload); s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    data += chunk
print(" ".join(code.decode() for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)), flush=True)
"""#

/// An HTTP/1.1 upstream on 127.0.0.1:PORT that answers each request, by its
/// path, with framing a proxy must follow byte by byte: /chunked (a chunked
/// body with an extension and a trailer, sent in small pieces), /close (no
/// length: the body ends when the server closes), /early (103 Early Hints,
/// then the answer), /malformed (an invalid status line), /malformed-body (a
/// valid head and an invalid chunk size in one send), /extra (more bytes
/// than its Content-Length), /refuse (413 at once, before the body, then
/// close), /hold-refuse (reads nothing of the body, answers 413 after 1 s and
/// keeps the connection open without reading), /ok.
let framingServer = #"""
import socket, sys, threading, time
port = int(sys.argv[1])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", port)); server.listen(64)
answers = {
    "/chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel", b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n", b"\r\n"],
    "/early": [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly"],
    "/malformed": [b"HTTP/1.1 2x0 Strange\r\n\r\n"],
    "/malformed-body": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    "/extra": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"],
    "/ok": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
}
def serve(connection):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk: connection.close(); return
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1].decode()
        if path == "/refuse":
            connection.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"); connection.close(); return
        if path == "/hold-refuse":
            time.sleep(1); connection.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"); time.sleep(30); connection.close(); return
        if path == "/close":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"); connection.close(); return
        for piece in answers.get(path, answers["/ok"]):
            connection.sendall(piece); time.sleep(0.02)
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// Talks to an echo through HOST PORT one byte every 0.3 s for 2 s, prints
/// "alive", then stays silent and prints "closed" and the seconds until the
/// proxy closed the connection (at most 10).
let idleProbeClient = #"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for _ in range(7):
    s.sendall(b"x")
    if s.recv(16) != b"x": print("no echo"); sys.exit(1)
    time.sleep(0.3)
print("alive")
start = time.monotonic()
try:
    data = s.recv(16)
except (ConnectionResetError, socket.timeout):
    data = b""
print("closed" if data == b"" else "data", round(time.monotonic() - start, 1))
"""#

/// Asks HOST PORT for /bytes/SIZE with `Connection: close` through a small
/// receive buffer and reads at most 4 MiB a second; prints how many body bytes
/// arrived before the connection closed.
let slowClosingDownload = #"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536); s.settimeout(30); s.connect((host, port))
s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % size)
data, total, start = b"", 0, time.monotonic()
while True:
    chunk = s.recv(65536)
    if not chunk: break
    if len(data) < 4096: data += chunk
    total += len(chunk)
    ahead = total / (4 << 20) - (time.monotonic() - start)
    if ahead > 0: time.sleep(ahead)
print(total - (data.index(b"\r\n\r\n") + 4))
"""#

/// An HTTP server on 127.0.0.1:PORT that answers each request with SIZE
/// bytes, writing as fast as its peer takes them; when its peer has taken
/// nothing for 3 s, it writes the bytes sent so far to REPORT-PATH (the
/// request's path with '/' as '-'), then finishes the response.
let stallReportingServer = #"""
import select, socket, sys, threading
port, size, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); server.bind(("127.0.0.1", port)); server.listen(16)
def serve(connection):
    head = b""
    while b"\r\n\r\n" not in head:
        data = connection.recv(65536)
        if not data: connection.close(); return
        head += data
    path = head.split(b" ")[1].decode().replace("/", "-")
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    connection.setblocking(False)
    chunk, sent, reported = b"x" * 65536, 0, False
    while sent < size:
        _, writable, _ = select.select([], [connection], [], 3)
        if not writable:
            if not reported:
                with open(report + path, "w") as f: f.write(str(sent))
                reported = True
            continue
        try: sent += connection.send(chunk[:min(65536, size - sent)])
        except BlockingIOError: pass
    connection.setblocking(True); connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// Connects to HOST PORT, asks for PATH, reads nothing until the file
/// WAIT-FOR exists (at most 30 s), then reads the whole response; prints the
/// body bytes it got.
let stalledDownload = #"""
import os, socket, sys, time
host, port, path, wait_for = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536); s.connect((host, port))
s.sendall(b"GET %s HTTP/1.1\r\nHost: stalled\r\nConnection: close\r\n\r\n" % path.encode())
deadline = time.monotonic() + 30
while not os.path.exists(wait_for) and time.monotonic() < deadline: time.sleep(0.05)
if not os.path.exists(wait_for): sys.exit("the upstream never reported a stall")
head, total = b"", 0
while b"\r\n\r\n" not in head:
    data = s.recv(65536)
    if not data: break
    head += data
total = len(head.split(b"\r\n\r\n", 1)[1]) if b"\r\n\r\n" in head else 0
while True:
    data = s.recv(1 << 20)
    if not data: break
    total += len(data)
print(total)
"""#

/// An HTTP/1.1 server on 127.0.0.1:PORT for body integrity: a request for
/// `/i/SEED/SIZE/FRAMING` (its body Content-Length framed or chunked) is
/// answered with the SHA-256 of the request body in hex, a newline, and SIZE
/// bytes drawn from SEED, framed by Content-Length (`length`), by chunks of
/// random sizes (`chunked`), or by the close of the connection (`close`).
let integrityServer = #"""
import hashlib, http.server, random, sys
port = int(sys.argv[1])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""): pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size)); self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    def answer(self):
        _, _, seed, size, framing = self.path.split("/")
        content = hashlib.sha256(self.body()).hexdigest().encode() + b"\n" + random.Random(int(seed)).randbytes(int(size))
        self.send_response(200)
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            pieces, at = random.Random(int(seed) + 1), 0
            while at < len(content):
                piece = content[at:at + pieces.choice([1, 7, 4096, 70000])]; at += len(piece)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif framing == "close":
            self.send_header("Connection", "close"); self.end_headers(); self.wfile.write(content); self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(content))); self.end_headers(); self.wfile.write(content)
    do_GET = do_POST = do_PUT = answer
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""#

/// Drives ``integrityServer`` through HOST PORT (over TLS when given a CA
/// file and a server name): CONNECTIONS connections at once, each sending
/// REQUESTS requests in pipelined batches of one to three (written while the
/// answers are read), with random bodies of sizes
/// around a read's 64 KiB, Content-Length framed or chunked in random pieces,
/// asking for random response sizes and framings (until close, one in ten:
/// the last of its batch, after which the connection is made anew), and
/// checking every byte both ways. Prints "ok TOTAL", or the first request that
/// came back wrong, with the seed that repeats the run.
let integrityClient = #"""
import hashlib, random, select, socket, ssl, sys, threading
host, port, connections, requests, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tls = ssl.create_default_context(cafile=sys.argv[6]) if len(sys.argv) > 7 else None
problems, done = [], []
def connect():
    s = socket.create_connection((host, port), timeout=20)
    if tls: s = tls.wrap_socket(s, server_hostname=sys.argv[7])
    s.setblocking(False)
    return [s, bytearray(), bytearray()]
def request(rng, last_in_batch):
    body = rng.randbytes(rng.choice([0, 1, 700, 65535, 65536, 65537, 200000]))
    framing = rng.choice(["length"] * 4 + ["chunked"] * 5 + (["close"] if last_in_batch else []))
    size, answer = rng.choice([0, 1, 5000, 65536, 70000, 300000]), rng.randrange(1 << 30)
    method = "GET" if not body and rng.random() < 0.5 else rng.choice(["POST", "PUT"])
    head = "%s /i/%d/%d/%s HTTP/1.1\r\nHost: h\r\n" % (method, answer, size, framing)
    if body and rng.random() < 0.5:
        cuts = sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1))) if len(body) > 1 else []
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
        wire = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        wire = head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    expected = hashlib.sha256(body).hexdigest().encode() + b"\n" + random.Random(answer).randbytes(size)
    return wire, expected, "%s (body %d)" % (head.split("\r\n")[0], len(body)), framing == "close"
def fill(connection):
    """Sends what the connection has to send while waiting for more to read (one thread: TLS allows no other)."""
    s, received, unsent = connection
    while True:
        if not (tls and s.pending()):
            readable, writable, _ = select.select([s], [s] if unsent else [], [], 20)
            if not readable and not writable: raise TimeoutError("nothing for 20 s")
            if writable:
                try: del unsent[:s.send(unsent[:262144])]
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError): pass
            if not readable: continue
        try: data = s.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError): continue
        if not data: raise EOFError("closed")
        received += data
        return
def line(connection):
    while b"\r\n" not in connection[1]: fill(connection)
    at = connection[1].index(b"\r\n"); text = bytes(connection[1][:at]); del connection[1][:at + 2]; return text
def take(connection, count):
    while len(connection[1]) < count: fill(connection)
    data = bytes(connection[1][:count]); del connection[1][:count]; return data
def response(connection):
    status = int(line(connection).split()[1]); fields = {}
    while True:
        text = line(connection)
        if not text: break
        name, _, value = text.partition(b":"); fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int(line(connection).split(b";")[0], 16)
            if size == 0:
                while line(connection): pass
                return status, body
            body += take(connection, size); line(connection)
    if b"content-length" in fields: return status, take(connection, int(fields[b"content-length"]))
    try:
        while True: fill(connection)
    except EOFError:
        body = bytes(connection[1]); connection[1].clear(); return status, body
def run(index):
    try: exchange(index)
    except Exception as error: problems.append("connection %d: %r" % (index, error))
def exchange(index):
    rng = random.Random(seed * 1000 + index)
    connection, number = connect(), 0
    while number < requests:
        batch = []
        for position in range(min(rng.choice([1, 1, 2, 3]), requests - number)):
            batch.append(request(rng, position == 0 or rng.random() < 0.5))
            if batch[-1][3]: break
        connection[2] += b"".join(wire for wire, _, _, _ in batch)
        for wire, expected, what, closes in batch:
            try:
                status, got = response(connection)
            except Exception as error:
                problems.append("connection %d request %d %s: %r" % (index, number, what, error)); return
            if status != 200 or got != expected:
                first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                problems.append("connection %d request %d %s: status %d, %d bytes of %d, first difference at %d"
                                % (index, number, what, status, len(got), len(expected), first)); return
            done.append(1); number += 1
        if batch[-1][3]: connection[0].close(); connection = connect()
    connection[0].close()
threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(("ok %d" % len(done)) if not problems else "seed %d: %s" % (seed, problems[0]), flush=True)
"""#

/// Reads a socket until its peer closes or it fails (Python, for the scripts
/// below): the status codes of the HTTP answers read, and "closed", "open"
/// (a timeout) or the error's name.
private let statusesToEnd = #"""
import re, socket
def statuses_to_end(s, data=b""):
    state = "open"
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk: state = "closed"; break
            data += chunk
    except socket.timeout:
        pass
    except OSError as error:
        state = type(error).__name__
    return " ".join(code.decode() for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)) + " " + state

"""#

/// Bad input of every kind the proxy must survive without keeping anything:
/// to HTTP_PORT a malformed request, oversized headers, conflicting framing
/// (smuggling), a good request followed by garbage, a body cut short, and a
/// large response reset by the client midway; 200 connections at once to
/// LIMITED_PORT (a tenant allowing 2), and meanwhile a request to HTTP_PORT; 20 connections to L4_PORT (whose
/// upstream refuses them); plaintext and a handshake cut short to TLS_PORT.
/// Prints each case's name and what it saw (status codes, then "closed",
/// "open" or the error), one per line.
let badInputs = statusesToEnd + #"""
import socket, struct, sys
http, l4, tls, limited = (int(port) for port in sys.argv[1:5])
def exchange(port, payload, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(payload)
        seen = statuses_to_end(s) if read else " open"
    except OSError as error:
        seen = " " + type(error).__name__
    s.close()
    return seen
def report(name, seen): print(name, seen.strip(), flush=True)
report("malformed", exchange(http, b"GARBAGE\r\n\r\n"))
report("oversized", exchange(http, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n"))
report("smuggling", exchange(http, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
report("garbage-after-a-request", exchange(http, b"GET /g HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE\r\n\r\n"))
report("body-cut-short", exchange(http, b"POST /cut HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n0123456789", read=False))
s = socket.create_connection(("127.0.0.1", http), timeout=5)
s.sendall(b"GET /bytes/5000000 HTTP/1.1\r\nHost: h\r\n\r\n"); got = s.recv(1000)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
report("reset-midway", ("200" if got.startswith(b"HTTP/1.1 200") else repr(got[:20])) + " reset")
flood = []
for _ in range(200):
    try: flood.append(socket.create_connection(("127.0.0.1", limited), timeout=5))
    except OSError: pass
# While the flood's connections are open, another tenant still answers.
meanwhile = exchange(http, b"GET /meanwhile HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
for s in flood: s.close()
report("flood", "%d connected, meanwhile %s" % (len(flood), meanwhile.strip()))
report("l4-refused", " ".join(sorted(set(exchange(l4, b"x").strip() for _ in range(20)))))
report("tls-plaintext", exchange(tls, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
report("tls-cut-short", exchange(tls, b"\x16\x03\x01\x02\x00\x01", read=False))
"""#

/// A slowloris: sends HOST PORT a request head one byte every 100 ms (8 s for
/// all of it, never its end), stopping once an answer is there to read; then
/// reads to the end. Prints the status codes, "closed" or "open", and whether
/// the answer came "before the head was whole" or "after it".
let tricklingClient = statusesToEnd + #"""
import select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
head = b"GET /static/t HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 40 + b"\r\n"
sent = 0
while sent < len(head):
    if select.select([s], [], [], 0.1)[0]: break
    s.send(head[sent:sent + 1]); sent += 1
when = "before the head was whole" if sent < len(head) else "after it"
print(statuses_to_end(s).strip(), when, flush=True)
"""#

/// Two clients of 127.0.0.1:PORT around a drain: A's request is answered and
/// its keep-alive connection left idle; B's request is sent, "ready" printed
/// (the test then starts the drain while B waits for its answer), and B's
/// answer read. Prints how A's connection ended ("closed", or "open" after
/// 15 s), B's status line, whether B's answer said "close" or "keep-alive",
/// and how B's connection ended.
let drainingClients = #"""
import re, socket, sys
port = int(sys.argv[1])
def connect():
    return socket.create_connection(("127.0.0.1", port), timeout=15)
def request(s, path):
    s.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
    return s
def response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk: return b"(closed)", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length: rest += s.recv(65536)
    return head, rest
def ends(s):
    try: return "closed" if s.recv(1) == b"" else "more"
    except socket.timeout: return "open"
    except ConnectionResetError: return "reset"
def answer(s):
    try: head, _ = response(s)
    except ConnectionResetError: return "reset"
    said = "close" if b"connection: close" in head.lower() else "keep-alive"
    return "%s %s %s" % (head.split(b"\r\n")[0].decode(), said, ends(s))
a = request(connect(), "/a"); response(a)
b = request(connect(), "/b")
c = connect()   # accepted, and not used yet
print("ready", flush=True)
print("A", ends(a), "B", answer(b), "C", ends(c), flush=True)
"""#

/// A server on 127.0.0.1:PORT that streams SIZE bytes of a fixed pattern to
/// each connection from a small send buffer, once the connection's first
/// bytes arrive: as raw bytes (MODE "tcp"), or as the body of an HTTP/1.1
/// response once a request head — and its body, by its Content-Length, read
/// slowly, from a small receive buffer — is read (MODE "http"); then closes.
let patternStreamServer = #"""
import re, socket, sys, threading, time
port, size, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
chunk = bytes(range(256)) * 256
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)   # (inherited by the connections; not under a loopback segment)
server.bind(("127.0.0.1", port)); server.listen(64)
def serve(connection):
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    received = b""
    while (b"\r\n\r\n" not in received) if mode == "http" else not received:
        data = connection.recv(65536)
        if not data: break
        received += data
    if mode == "http":
        length = re.search(rb"(?im)^content-length:\s*(\d+)", received.partition(b"\r\n\r\n")[0])
        left = (int(length.group(1)) if length else 0) - len(received.partition(b"\r\n\r\n")[2])
        while left > 0:
            data = connection.recv(min(left, 4096))
            if not data: return connection.close()
            left -= len(data)
            time.sleep(0.0005)   # (slower than the proxy sends: what the kernel's buffers do not take waits in the proxy)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    sent = 0
    try:
        while sent < size:
            piece = chunk[:min(len(chunk), size - sent)]
            connection.sendall(piece); sent += len(piece)
    finally:
        connection.close()
while True:
    connection, _ = server.accept(); threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""#

/// Opens COUNT connections to HOST PORT with small receive buffers and asks
/// each for a stream (`patternStreamServer`'s; MODE "tcp" or "http", or
/// "tls" and "https", those over TLS to the server name NAME trusting the CA file CA), reads
/// nothing until the file GO exists, then reads each to its end; prints, per
/// connection, "ok" when its SIZE bytes arrived as sent, else what arrived.
let stalledReaders = #"""
import hashlib, os, socket, ssl, sys, time
host, port, count, size, mode, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
tls = ssl.create_default_context(cafile=sys.argv[8]) if mode in ("tls", "https") else None
http = mode in ("http", "https")
chunk = bytes(range(256)) * 256
expected = hashlib.sha256()
for start in range(0, size, len(chunk)): expected.update(chunk[:min(len(chunk), size - start)])
connections = []
for _ in range(count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(60)
    s.connect((host, port))
    if tls: s = tls.wrap_socket(s, server_hostname=sys.argv[7])
    if http: s.sendall(b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    elif tls: s.sendall(b"x")
    else: s.sendall(b"x"); s.shutdown(socket.SHUT_WR)
    connections.append(s)
deadline = time.time() + 300
while not os.path.exists(go) and time.time() < deadline: time.sleep(0.01)
results = []
for s in connections:
    digest, total, head = hashlib.sha256(), 0, (b"" if http else None)
    try:
        while True:
            data = s.recv(65536)
            if not data: break
            if head is not None:
                head += data
                if b"\r\n\r\n" not in head: continue
                head, _, data = head.partition(b"\r\n\r\n")
                head = None
            digest.update(data); total += len(data)
        results.append("ok" if total == size and digest.digest() == expected.digest() else "got-%d" % total)
    except OSError as error:
        results.append("error-%s" % type(error).__name__)
print(" ".join(results), flush=True)
"""#
