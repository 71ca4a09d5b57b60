/// A connection's handler that can end its connection gracefully when the
/// proxy drains: what is in progress finishes, then the connection closes —
/// at once if nothing is. (An HTTP connection between requests; one in the
/// middle of a request answers it with `Connection: close`.)
protocol GracefulClosing: AnyObject {
    /// The proxy is draining: finish what is in progress, take nothing new, and close.
    func closeGracefully()
}

/// The event a drain sends down a connection's NIO pipeline, for the
/// ``GracefulClosing`` handler in it.
struct ProxyDraining: Sendable {}
