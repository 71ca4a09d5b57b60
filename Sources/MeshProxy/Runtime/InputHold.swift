import NIOCore

/// Holds what an accepted connection reads before the handlers that serve
/// it are in — in L4, while its upstream connects — so that bytes a client
/// sends with its half-close are not lost (``HeldInbound``).
///
/// Then either ``open(_:)`` passes them on to the handlers behind it and the
/// hold steps aside, or ``takeBytes(_:)`` takes them for a splice loop.
final class InputHold: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var held = HeldInbound()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        held.append(unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        held.append(event: event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        held.removeAll()
        context.fireChannelInactive()
    }

    /// Passes what `channel`'s hold held to the handlers now behind it, in
    /// order, and removes the hold (nothing to do for a channel without one).
    /// On the channel's event loop.
    static func open(_ channel: any Channel) {
        let pipeline = channel.pipeline.syncOperations
        guard let context = try? pipeline.context(handlerType: InputHold.self),
              let hold = context.handler as? InputHold else { return }
        hold.held.release(after: context)
        pipeline.removeHandler(context: context, promise: nil)
    }

    /// The bytes `channel`'s hold read (none for a channel without one), for
    /// its socket that leaves NIO. On the channel's event loop.
    static func takeBytes(_ channel: any Channel) -> [UInt8] {
        guard let hold = try? channel.pipeline.syncOperations.handler(type: InputHold.self) else { return [] }
        return hold.held.takeBytes()
    }
}
