import NIOCore

/// Closes a connection that has been silent in both directions for its
/// timeout. Every read and write moves the deadline, which costs a clock
/// read and no scheduling (``DeadlineTimer``): unlike NIO's
/// `IdleStateHandler`, no promise or callback is made per write.
final class IdleTimeoutHandler: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let timeout: TimeAmount
    private var timer: DeadlineTimer?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = DeadlineTimer(eventLoop: context.eventLoop) { channel.close(promise: nil) }
        timer?.set(in: timeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil   // its action holds the channel
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        timer?.set(in: timeout)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        timer?.set(in: timeout)
        context.write(data, promise: promise)
    }
}
