import NIOCore

/// A NIO channel as a ``StreamTransport``, driven from its handler's context:
/// writes go through ``SocketOutput`` (straight to the socket where its bytes are the socket's).
/// Of the delegate's events it tells only ``StreamTransportDelegate/transportOutputEmptied()``:
/// the handler hears the others as the channel's.
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class ChannelTransport: StreamTransport {
    private let context: ChannelHandlerContext
    /// Made at the first write, when the pipeline is complete (its TLS handler, if any, in place).
    @exclusivity(unchecked) private var madeOutput: SocketOutput?
    /// Where what NIO holds of the output is counted.
    private let buffers: TenantBuffers?
    /// The handler, told when what NIO held of the output is all written.
    private weak var delegate: (any StreamTransportDelegate)?

    /// The transport of the handler at `context` (its `delegate`), its output held in `buffers`.
    init(_ context: ChannelHandlerContext, buffers: TenantBuffers?, delegate: any StreamTransportDelegate) {
        self.context = context
        self.buffers = buffers
        self.delegate = delegate
    }

    private var output: SocketOutput {
        SocketOutput.kept(in: &madeOutput, for: context, buffers: buffers, whenEmptied: { [weak delegate] in delegate?.transportOutputEmptied() })
    }

    var eventLoop: any EventLoop { context.eventLoop }
    var isActive: Bool { context.channel.isActive }
    var isWritable: Bool { context.channel.isWritable }
    var heldBytes: Int { madeOutput?.heldBytes ?? 0 }
    var hasUnreadInput: Bool? { SocketOutput.plaintextSocket(of: context).flatMap(UnreadInput.exists(on:)) }
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
