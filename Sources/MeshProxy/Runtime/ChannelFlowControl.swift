import NIOCore

extension ChannelOptions.Types.WriteBufferWaterMark {
    /// At most `bytes` wait to be written before the channel says it is not
    /// writable (then the proxy stops reading the side that feeds it); it is
    /// writable again below half of that.
    init(limit bytes: Int) {
        self.init(low: bytes / 2, high: bytes)
    }
}

extension Channel {
    /// Turns reading on or off (the proxy does it per request under backpressure and per pooled lease).
    func setAutoRead(_ on: Bool) {
        setOptionNow(.autoRead, value: on)
    }

    /// Limits the bytes waiting to be written to `bytes` (``ChannelOptions/Types/WriteBufferWaterMark/init(limit:)``):
    /// a tenant's ``TenantLimits/maxBufferedBytes`` per direction.
    func setWriteBufferLimit(_ bytes: Int) {
        setOptionNow(.writeBufferWaterMark, value: .init(limit: bytes))
    }

    /// Reads at most 16 KiB a readable event (``TenantBuffers/cappedReadSize``, one read
    /// a turn): a tenant's bandwidth or cap of buffered bytes is checked between reads,
    /// and overshot by at most one of them. And fixes the socket's kernel receive
    /// buffer (``TenantBuffers/cappedReceiveBuffer``): at the peer's end of stream
    /// NIO reads everything the socket holds in one go, reading paused or not,
    /// which a receive buffer the kernel had grown to megabytes would make megabytes.
    func readInSmallSteps() {
        setOptionNow(.maxMessagesPerRead, value: 1)
        setOptionNow(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: TenantBuffers.cappedReadSize))
        setOptionNow(.socketOption(.so_rcvbuf), value: SocketOptionValue(TenantBuffers.cappedReceiveBuffer))
    }

    /// Sets an option: on the channel's event loop at once, through the
    /// synchronous options, without making a future; from elsewhere, as a task.
    /// It can fail only on a closed channel, which needs it no more.
    private func setOptionNow<Option: ChannelOption>(_ option: Option, value: Option.Value) {
        if eventLoop.inEventLoop, let options = syncOptions {
            try? options.setOption(option, value: value)
        } else {
            _ = setOption(option, value: value)
        }
    }
}
