import Glibc

/// What a socket's peer has sent that the proxy has not read yet.
enum UnreadInput {
    /// Whether `socket` has bytes from its peer waiting to be read (`FIONREAD`); nil if it cannot tell.
    static func exists(on socket: Int32) -> Bool? {
        var count: Int32 = 0
        return ioctl(socket, UInt(FIONREAD), &count) == 0 ? count > 0 : nil
    }
}
