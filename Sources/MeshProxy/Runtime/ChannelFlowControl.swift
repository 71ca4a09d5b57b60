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

    /// Lets at most `bytes` wait to be written before the channel says it is
    /// not writable (then the proxy stops reading the side that feeds it):
    /// a tenant's ``TenantLimits/maxBufferedBytes`` per direction.
    func setWriteBufferLimit(_ bytes: Int) {
        let marks = ChannelOptions.Types.WriteBufferWaterMark(low: bytes / 2, high: bytes)
        if eventLoop.inEventLoop, let options = syncOptions {
            try? options.setOption(.writeBufferWaterMark, value: marks)
        } else {
            _ = setOption(.writeBufferWaterMark, value: marks)
        }
    }
}
