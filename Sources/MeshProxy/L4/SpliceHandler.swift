import NIOCore

/// One side of two spliced connections: what it reads, its partner writes.
/// Used where a splice stays on its event loop — connections that terminate
/// TLS here, or whose splice loop cannot start; plaintext connections splice
/// on a ``SpliceLoop`` instead (their tenant's, or the one a shared group's
/// tenants share beside their event loop).
///
/// Reading pauses while the partner cannot take more (its write buffer is
/// above the high-water mark), a half-close travels across — the partner's
/// output is shut down once everything written to it has gone out — and
/// when either connection closes both do. With a bandwidth limit, a side that
/// puts its tenant in debt stops reading until the debt is paid; a side that
/// finds its tenant at its cap of buffered bytes (what NIO holds of the
/// outputs counts in it) while NIO holds what it read for the partner stops
/// reading until the tenant has room or the partner's output is empty. With an idle
/// timeout, a pair silent that long in both directions is closed (one
/// ``IdleWatch`` for both sides: every write is a partner's read), and so is
/// a side left open after the other ended, once silent that long. Both
/// channels must be on the same event loop: partners call each other directly.
final class SpliceHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: SpliceHandler?
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var inputClosed = false
    /// The partner's half-close asked this side's output to close (after the pending writes).
    private var outputClosing = false
    /// This side's output is shut down: every write before it went out.
    private var outputShutDown = false
    /// The wait over the bandwidth's debt.
    private var throttle: Scheduled<Void>?
    /// The wait for room under the tenant's cap (never at the same time as ``throttle``).
    private var roomWaiting = RoomWaiting()
    /// Woken from a throttle while the partner could not take more: resume reading when it can.
    private var resumeWhenWritable = false
    private let countBytes: @Sendable (Int) -> Void
    /// Bytes read and not yet counted: the shared counters are told once per read batch.
    private var uncounted = 0
    private let bandwidth: TokenBucket?
    private let countThrottle: @Sendable () -> Void
    /// The tenant's buffered bytes, which this side's output counts in.
    private let buffers: TenantBuffers?
    /// Told why a side failed (a reset, a write error) before both close.
    private let failed: @Sendable (any Error) -> Void
    /// The pair's idle watch, started by the first side; the side left open
    /// when the other is removed takes it over, and the last one stops it.
    private let idle: IdleWatch?
    /// Whether this side starts the pair's idle watch (the first of the pair does).
    private let startsIdleWatch: Bool
    /// Where what the partner read goes; made at the first write.
    private var output: SocketOutput?

    private init(countBytes: @escaping @Sendable (Int) -> Void, bandwidth: TokenBucket?, countThrottle: @escaping @Sendable () -> Void,
                 buffers: TenantBuffers?, failed: @escaping @Sendable (any Error) -> Void, idle: IdleWatch?, startsIdleWatch: Bool) {
        self.countBytes = countBytes
        self.bandwidth = bandwidth
        self.countThrottle = countThrottle
        self.buffers = buffers
        self.failed = failed
        self.idle = idle
        self.startsIdleWatch = startsIdleWatch
    }

    /// Two partners: bytes read by the first are counted with `first`, by the
    /// second with `second`; both draw on `bandwidth` (reading stops while it
    /// is in debt, each stop counted with `throttled`), and hold their bytes
    /// in `buffers` (reading waits at its cap); an error on either
    /// side goes to `failed`, then both close; with `idleTimeout`, both close
    /// after that long (and at most a quarter more) without a read on either side.
    static func pair(countingFirst first: @escaping @Sendable (Int) -> Void, second: @escaping @Sendable (Int) -> Void,
                     bandwidth: TokenBucket? = nil, throttled: @escaping @Sendable () -> Void = {}, buffers: TenantBuffers? = nil,
                     failed: @escaping @Sendable (any Error) -> Void = { _ in }, idleTimeout: TimeAmount? = nil) -> (SpliceHandler, SpliceHandler) {
        let idle = idleTimeout.map(IdleWatch.init(timeout:))
        let one = SpliceHandler(countBytes: first, bandwidth: bandwidth, countThrottle: throttled, buffers: buffers, failed: failed,
                                idle: idle, startsIdleWatch: true)
        let other = SpliceHandler(countBytes: second, bandwidth: bandwidth, countThrottle: throttled, buffers: buffers, failed: failed,
                                  idle: idle, startsIdleWatch: false)
        one.partner = other
        other.partner = one
        return (one, other)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Closing this side closes the partner too (channelInactive), or shuts its output down after a clean end.
        if startsIdleWatch { watchIdleness(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let partner, let partnerContext = partner.context, partnerContext.channel.isActive {
            // The partner stays open (after a clean end of this side): it is watched alone from now on.
            // (A partner closing with this side, the usual end, needs no watch: its removal follows.)
            partner.watchIdleness(partnerContext)
        } else {
            idle?.stop()   // the last of the pair: its action holds a channel
        }
        throttle?.cancel()
        throttle = nil
        roomWaiting.end(in: buffers)
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        idle?.noteActivity()
        uncounted += buffer.readableBytes
        // (Charged even while held: a read at the peer's end of stream comes whatever the pause.)
        if let bandwidth, case let debt = bandwidth.take(buffer.readableBytes), debt > .zero, !isHeld {
            countThrottle()
            stopReading(context, for: debt)
        }
        partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if uncounted > 0 {
            countBytes(uncounted)
            uncounted = 0
        }
        partner?.partnerFlush()
        // (Once flushed: what the partner's socket did not take is held by NIO, and counted, by now.)
        if !isHeld, let buffers, buffers.isFull, partnerHoldsBytes {
            buffers.waited()
            resumeWhenWritable = false   // (the wake-up decides again)
            context.channel.setAutoRead(false)
            waitForRoom(context, buffers)
        }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            partner?.partnerCloseOutput()
            if outputShutDown { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A clean end — this side's input ended, or its output was shut down
        // before it closed (NIO closes a half-closed channel at the peer's EOF
        // without an inputClosed event) — lets the partner write out what it
        // holds and then shut down; any other close cuts the partner off at once.
        if inputClosed || outputShutDown {
            partner?.partnerCloseOutput()
        } else {
            partner?.partnerClose()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failed(error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        idle?.noteActivity()   // the peer is taking (or not taking) what was written: a slow drain is not silence
        if context.channel.isWritable { partner?.partnerResumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partnerCanTake {
            context.read()
        } else {
            readPending = true
        }
    }

    // MARK: Bandwidth and buffered bytes

    /// Whether reading is held over the bandwidth or on the tenant's cap.
    private var isHeld: Bool { throttle != nil || roomWaiting.isWaiting }

    /// Over the tenant's bandwidth: this channel stops reading (autoRead off)
    /// until the bucket is out of debt — debt the other direction may have
    /// added meanwhile included, so it is checked again at each wake-up — and
    /// then, at the tenant's cap, until there is room.
    private func stopReading(_ context: ChannelHandlerContext, for wait: Duration) {
        resumeWhenWritable = false   // (the wake-up decides again)
        context.channel.setAutoRead(false)
        schedule(context, after: wait)
    }

    private func schedule(_ context: ChannelHandlerContext, after wait: Duration) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        throttle = context.eventLoop.scheduleTask(in: TimeAmount(wait)) {
            bound.value.wake()
        }
    }

    /// Waits for room under the tenant's cap, or for the partner's output to empty: then ``roomMayAllow()``.
    private func waitForRoom(_ context: ChannelHandlerContext, _ buffers: TenantBuffers) {
        roomWaiting.begin(in: buffers, for: self, on: context.eventLoop) { $0.roomMayAllow() }
    }

    /// The tenant may have room under its cap, or the partner's output may
    /// be empty: if waiting on the cap, this side looks again.
    private func roomMayAllow() {
        guard roomWaiting.end(in: buffers) else { return }
        wake()
    }

    private func wake() {
        throttle = nil
        guard let context else { return }   // removed meanwhile: nothing to resume
        if let remaining = bandwidth?.take(0), remaining > .zero {
            schedule(context, after: remaining)
        } else if let buffers, buffers.isFull, partnerHoldsBytes {
            waitForRoom(context, buffers)
        } else if partnerCanTake {
            // autoRead on reads at once, bypassing read(): only when the partner can take it.
            context.channel.setAutoRead(true)
        } else {
            resumeWhenWritable = true
        }
    }

    /// Whether NIO holds output of the partner: what this side read and the
    /// partner's peer has not taken. (A side whose direction holds none reads
    /// on even at the tenant's cap: stalled connections cannot starve one
    /// that moves, nor can the other direction's bytes stop this one.)
    private var partnerHoldsBytes: Bool { (partner?.output?.heldBytes ?? 0) > 0 }

    /// Whether the partner's channel can take more now.
    private var partnerCanTake: Bool { partner?.partnerIsWritable ?? false }

    // MARK: What the partner asks of this side

    private func partnerWrite(_ buffer: ByteBuffer) {
        guard let context else { return }
        socket(context).write(buffer, context)
    }

    private func partnerFlush() {
        guard let context else { return }
        socket(context).flush(context)
    }

    /// This side's output (made at the first write); once what NIO held of it
    /// is all written, the partner — which read it — may read on at the cap.
    private func socket(_ context: ChannelHandlerContext) -> SocketOutput {
        SocketOutput.kept(in: &output, for: context, buffers: buffers, whenEmptied: { [weak self] in self?.partner?.roomMayAllow() })
    }

    private var partnerIsWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerResumeReading() {
        // (Held over the bandwidth or the tenant's cap: the wake-up resumes reading, once they allow it.)
        guard let context, !isHeld else { return }
        if resumeWhenWritable {
            resumeWhenWritable = false
            context.channel.setAutoRead(true)
        }
        guard readPending else { return }
        readPending = false
        context.read()
    }

    /// The partner's input ended: shut this side's output down — after what is
    /// already written to it has gone out (a full close would drop it).
    private func partnerCloseOutput() {
        guard let context, !outputClosing else { return }
        outputClosing = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        // Once what NIO holds has gone too (what went straight to the socket is there already).
        socket(context).flushed(context).whenComplete { _ in
            let handler = bound.value
            guard let context = handler.context else { return }
            handler.outputShutDown = true
            if handler.inputClosed {
                context.close(promise: nil)
            } else {
                context.close(mode: .output, promise: nil)
            }
        }
    }

    private func partnerClose() { context?.close(promise: nil) }

    /// Starts (or restarts) the pair's idle watch to close this side's channel.
    private func watchIdleness(_ context: ChannelHandlerContext) {
        guard let idle else { return }
        let channel = context.channel
        idle.start(on: context.eventLoop) { channel.close(promise: nil) }
    }
}
