import Glibc
import MeshKernel

/// A connected TCP pair over 127.0.0.1, as raw blocking sockets, and the
/// listener it was accepted from (the caller closes all three). Throws the
/// failing call's `Errno`.
public func connectedTCPPair() throws(Errno) -> (client: Int32, server: Int32, listener: Int32) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard listener >= 0 else { throw .current }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
            bind(listener, generic, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, generic, &length) == 0
        }
    }
    guard bound else { throw failing(listener) }
    let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    let connected = client >= 0 && withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) == 0 }
    }
    guard connected else { throw failing(listener, client) }
    let server = accept(listener, nil, nil)
    guard server >= 0 else { throw failing(listener, client) }
    return (client, server, listener)
}

/// The current `Errno`, after closing `sockets`.
private func failing(_ sockets: Int32...) -> Errno {
    let error = Errno.current
    for socket in sockets where socket >= 0 { close(socket) }
    return error
}

/// A connected TCP pair over loopback: what a test's peer holds (blocking,
/// reads time out after 10 s) and what the proxy would hold (non-blocking).
public func loopbackPeerPair() throws -> (peer: Int32, proxy: Int32) {
    let (peer, proxy, listener) = try connectedTCPPair()
    close(listener)
    _ = fcntl(proxy, F_SETFL, fcntl(proxy, F_GETFL) | O_NONBLOCK)
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return (peer, proxy)
}

/// Sends all of `bytes` on a blocking socket.
public func sendAll(_ socket: Int32, _ bytes: [UInt8]) throws {
    var sent = 0
    while sent < bytes.count {
        let written = bytes.withUnsafeBytes { send(socket, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
        guard written > 0 else { throw Errno.current }
        sent += written
    }
}

/// Reads a socket to its end: its bytes, and the error that ended it instead of an orderly end (nil for none).
public func receiveToEnd(_ socket: Int32) -> (bytes: [UInt8], error: Errno?) {
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        if count == 0 { return (received, nil) }
        if count < 0 { return (received, Errno.current) }
        received += buffer[..<count]
    }
}

/// Reads exactly `count` bytes (fewer if the socket ends first).
public func receive(_ socket: Int32, count: Int) -> [UInt8] {
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: count)
    while received.count < count {
        let read = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, count - received.count, 0) }
        guard read > 0 else { break }
        received += buffer[..<read]
    }
    return received
}
