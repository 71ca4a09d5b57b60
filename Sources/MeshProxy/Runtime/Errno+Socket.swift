import Glibc
import MeshKernel

extension Errno {
    /// The socket's pending error (`SO_ERROR`), taken; nil for none (or the
    /// error of reading it).
    static func pendingIfAny(onSocket socket: Int32) -> Errno? {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(socket, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { return .current }
        return error == 0 ? nil : Errno(rawValue: error)
    }

    /// The pending error of a socket epoll reported as failed or hung up:
    /// its `SO_ERROR`, else a reset (a hang-up whose error was taken already).
    static func pending(onSocket socket: Int32) -> Errno {
        pendingIfAny(onSocket: socket) ?? Errno(rawValue: ECONNRESET)
    }
}
