import NIOCore

/// Closes a connection that has been silent in both directions for its
/// timeout (``IdleWatch``: at most a quarter more). A read or write costs a
/// store — no clock read, no scheduling, and unlike NIO's `IdleStateHandler`
/// no promise or callback per write.
final class IdleTimeoutHandler: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let watch: IdleWatch

    init(timeout: TimeAmount) {
        watch = IdleWatch(timeout: timeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        watch.start(on: context.eventLoop) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        watch.stop()   // its action holds the channel
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        watch.noteActivity()
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        watch.noteActivity()
        context.write(data, promise: promise)
    }
}
