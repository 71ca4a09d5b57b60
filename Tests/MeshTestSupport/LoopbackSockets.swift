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
