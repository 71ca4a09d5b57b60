// Real peers the telemetry tests run, as Python scripts.

/// An HTTP/1.1 keep-alive server: `/status/<code>/<size>` answers with that
/// status and a body of that size; request bodies are read and dropped.
/// Arguments: port, and for HTTPS a certificate and key file.
let httpServer = #"""
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length: self.rfile.read(length)
        parts = self.path.split("?")[0].split("/")
        code = int(parts[2]) if len(parts) > 2 and parts[1] == "status" else 200
        size = int(parts[3]) if len(parts) > 3 else 2
        body = b"x" * size
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = answer
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""#
