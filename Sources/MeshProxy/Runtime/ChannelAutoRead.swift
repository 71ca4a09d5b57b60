import NIOCore

extension Channel {
    /// Turns reading on or off. On the channel's event loop this is done at
    /// once through the synchronous options, without making a future (the
    /// proxy does it per request under backpressure and per pooled lease).
    func setAutoRead(_ on: Bool) {
        if eventLoop.inEventLoop, let options = syncOptions {
            try? options.setOption(.autoRead, value: on)
        } else {
            _ = setOption(.autoRead, value: on)
        }
    }
}
