import NIOCore

/// A NIO channel as a ``StreamTransport``, driven from its handler's context:
/// writes go through ``SocketOutput`` (straight to the socket where its bytes are the socket's).
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class ChannelTransport: StreamTransport {
    private let context: ChannelHandlerContext
    /// Made at the first write, when the pipeline is complete (its TLS handler, if any, in place).
    @exclusivity(unchecked) private var madeOutput: SocketOutput?

    /// The transport of the handler at `context`.
    init(_ context: ChannelHandlerContext) {
        self.context = context
    }

    private var output: SocketOutput { SocketOutput.kept(in: &madeOutput, for: context) }

    var eventLoop: any EventLoop { context.eventLoop }
    var isActive: Bool { context.channel.isActive }
    var isWritable: Bool { context.channel.isWritable }
    var remoteAddress: SocketAddress? { context.channel.remoteAddress }

    func write(_ bytes: ByteBuffer) { output.write(bytes, context) }

    func flush() { output.flush(context) }

    func setReading(_ on: Bool) { context.channel.setAutoRead(on) }

    func close() { context.close(promise: nil) }

    func closeAfterWrites() {
        context.channel.setAutoRead(false)
        let channel = context.channel
        output.flushed(context).whenComplete { _ in channel.close(promise: nil) }
    }
}
