import NIOCore

/// One side of two spliced connections: what it reads, its partner writes.
///
/// Reading pauses while the partner cannot take more (so a fast sender never
/// fills the proxy's memory beyond the channels' write-buffer high-water
/// mark), a half-close travels across (`shutdown(SHUT_WR)` on the other
/// side), and when either connection closes both do. Both channels must be
/// on the same event loop: partners call each other directly.
final class SpliceHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: SpliceHandler?
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var inputClosed = false
    private var outputClosed = false
    private var throttled = false
    private let countBytes: @Sendable (Int) -> Void
    private let bandwidth: TokenBucket?
    private let countThrottle: @Sendable () -> Void

    private init(countBytes: @escaping @Sendable (Int) -> Void, bandwidth: TokenBucket?, countThrottle: @escaping @Sendable () -> Void) {
        self.countBytes = countBytes
        self.bandwidth = bandwidth
        self.countThrottle = countThrottle
    }

    /// Two partners: bytes read by the first are counted with `first`, by the
    /// second with `second`; both draw on `bandwidth` (reads wait while it is
    /// in debt, each wait counted with `throttled`).
    static func pair(countingFirst first: @escaping @Sendable (Int) -> Void, second: @escaping @Sendable (Int) -> Void,
                     bandwidth: TokenBucket? = nil, throttled: @escaping @Sendable () -> Void = {}) -> (SpliceHandler, SpliceHandler) {
        let one = SpliceHandler(countBytes: first, bandwidth: bandwidth, countThrottle: throttled)
        let other = SpliceHandler(countBytes: second, bandwidth: bandwidth, countThrottle: throttled)
        one.partner = other
        other.partner = one
        return (one, other)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        countBytes(buffer.readableBytes)
        if let bandwidth, case let debt = bandwidth.take(buffer.readableBytes), debt > .zero, !throttled {
            throttle(context, for: debt)
        }
        partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            partner?.partnerCloseOutput()
            if outputClosed { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.partnerClose()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerResumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerIsWritable ?? false {
            context.read()
        } else {
            readPending = true
        }
    }

    /// Over the tenant's bandwidth: this channel stops reading (autoRead off)
    /// until the bucket is out of debt — debt its partner direction may have
    /// added meanwhile included — then reads again.
    private func throttle(_ context: ChannelHandlerContext, for wait: Duration) {
        throttled = true
        countThrottle()
        _ = context.channel.setOption(.autoRead, value: false)
        schedule(context.channel, after: wait)
    }

    private func schedule(_ channel: any Channel, after wait: Duration) {
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        channel.eventLoop.scheduleTask(in: .nanoseconds(wait.components.seconds * 1_000_000_000 + wait.components.attoseconds / 1_000_000_000)) {
            let handler = bound.value
            if let remaining = handler.bandwidth?.take(0), remaining > .zero {
                handler.schedule(channel, after: remaining)
            } else {
                handler.throttled = false
                _ = channel.setOption(.autoRead, value: true)
            }
        }
    }

    // MARK: What the partner asks of this side

    private func partnerWrite(_ buffer: ByteBuffer) { context?.write(wrapOutboundOut(buffer), promise: nil) }

    private func partnerFlush() { context?.flush() }

    private var partnerIsWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerResumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }

    private func partnerCloseOutput() {
        guard let context, !outputClosed else { return }
        outputClosed = true
        context.flush()
        if inputClosed {
            context.close(promise: nil)
        } else {
            context.close(mode: .output, promise: nil)
        }
    }

    private func partnerClose() { context?.close(promise: nil) }
}

/// Closes a connection that has been silent for its tenant's idle timeout.
final class IdleCloseHandler: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
