import Glibc
import NIOCore
import NIOSSL

/// A channel's output as one handler writes it: sent straight to the
/// channel's TCP socket, with one `send` per buffer, while NIO holds none of
/// it — sparing NIO's write path (its pipeline passes, pending-writes
/// bookkeeping and vector set-up, about 4,000 user-space instructions a
/// flush on this VM) — and written through the handler's context as before
/// otherwise:
///
/// - for a channel whose bytes are not its socket's (TLS in its pipeline, or
///   no socket at all, as in tests on `EmbeddedChannel`): always;
/// - for what the socket does not take at once: NIO then waits for the
///   socket to drain and reports writability, and what is written after it
///   goes through NIO too until it is out, so the order is kept;
/// - on an error: NIO meets it again and reports it as it always does.
///
/// Only the owning handler writes to the channel, all on its event loop.
///
/// What NIO holds of it counts in the tenant's ``TenantBuffers`` until NIO
/// has written it (its write's promise completes) — for a channel whose bytes
/// are not its socket's, only while the tenant has a cap (each write then
/// takes a promise).
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class SocketOutput {
    private let channel: any Channel
    /// The channel's socket when its bytes go straight to it; nil to write through NIO only.
    private let socket: NIOBSDSocket.Handle?
    /// Written, not yet flushed (straight mode).
    @exclusivity(unchecked) private var unflushed: [ByteBuffer] = []
    /// Writes handed to NIO and not yet done: while any are, NIO writes all.
    @exclusivity(unchecked) private var inNIO = 0
    /// Where what NIO holds is counted.
    private let buffers: TenantBuffers?
    /// What NIO holds of the output now (counted in ``buffers``).
    @exclusivity(unchecked) private(set) var heldBytes = 0
    /// Told, on a later turn of the loop, each time what NIO held of the
    /// output is all written (``heldBytes`` back to 0 by writes, not by a
    /// close) while a connection of the tenant waits for room: a reader
    /// waiting on the tenant's cap for it looks again.
    private let whenEmptied: () -> Void

    /// The output of the channel of `context` as its handler writes it, made
    /// once the pipeline is complete. The handler's bytes are the socket's
    /// unless NIO-SSL's handler is in the pipeline (the only one in the
    /// proxy's pipelines that changes bytes on their way out).
    init(_ context: ChannelHandlerContext, buffers: TenantBuffers?, whenEmptied: @escaping () -> Void) {
        channel = context.channel
        self.buffers = buffers
        self.whenEmptied = whenEmptied
        socket = Self.plaintextSocket(of: context)
    }

    /// The TCP socket of the channel of `context` when the handler's bytes
    /// are the socket's: nil with NIO-SSL's handler in the pipeline (the only
    /// one in the proxy's pipelines that changes bytes on their way), or for
    /// a channel without a socket.
    static func plaintextSocket(of context: ChannelHandlerContext) -> NIOBSDSocket.Handle? {
        let pipeline = context.pipeline.syncOperations
        guard (try? pipeline.context(handlerType: NIOSSLHandler.self)) == nil else { return nil }
        return (try? pipeline.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { $0 }) ?? nil
    }

    /// `output`, or — the first time — a new output for the handler of
    /// `context` counting in `buffers` and telling `whenEmptied`, kept in `output`.
    static func kept(in output: inout SocketOutput?, for context: ChannelHandlerContext, buffers: TenantBuffers?,
                     whenEmptied: @autoclosure () -> (() -> Void)) -> SocketOutput {
        if let output { return output }
        let made = SocketOutput(context, buffers: buffers, whenEmptied: whenEmptied())
        output = made
        return made
    }

    /// Writes `bytes`; they go out at the next ``flush(_:)``.
    func write(_ bytes: ByteBuffer, _ context: ChannelHandlerContext) {
        guard socket != nil else {
            // (Counted only for a tenant with a cap: a write's promise is not paid for nothing.)
            if buffers?.isCapped == true { writeCounted(bytes, context) } else { context.write(NIOAny(bytes), promise: nil) }
            return
        }
        if inNIO > 0 { handToNIO(bytes, context) } else { unflushed.append(bytes) }
    }

    /// Sends what was written.
    func flush(_ context: ChannelHandlerContext) {
        guard let socket, inNIO == 0 else {
            context.flush()
            return
        }
        guard !unflushed.isEmpty else { return }
        // (A closed channel's descriptor may be another socket's by now. NIO closes the socket and turns
        // isActive false in one step, with no handler code run between the two: checked here, it is never written.)
        guard channel.isActive else {
            unflushed.removeAllOneByOne()
            return
        }
        var index = 0
        while index < unflushed.count {
            let sent = unflushed[index].withUnsafeReadableBytes { bytes in
                Self.send(bytes, to: socket)
            }
            guard sent == unflushed[index].readableBytes else {
                // The socket takes no more now, or failed: NIO writes the rest, and waits or reports.
                unflushed[index].moveReaderIndex(forwardBy: max(sent, 0))
                for bytes in unflushed[index...] { handToNIO(bytes, context) }
                context.flush()
                break
            }
            index += 1
        }
        unflushed.removeAllOneByOne()
    }

    /// Sends what was written; the future succeeds once all of it has gone
    /// (into the socket, or NIO wrote it out).
    func flushed(_ context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        flush(context)
        // Whatever NIO still holds goes before this empty write's completion.
        return context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0)))
    }

    /// Writes `bytes` through NIO, counted until done.
    private func handToNIO(_ bytes: ByteBuffer, _ context: ChannelHandlerContext) {
        inNIO += 1
        writeCounted(bytes, context) { [self] in inNIO -= 1 }
    }

    /// Writes `bytes` through NIO, held in the tenant's buffers until NIO is done with them; then `done`.
    private func writeCounted(_ bytes: ByteBuffer, _ context: ChannelHandlerContext, done: @escaping () -> Void = {}) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        let count = bytes.readableBytes
        buffers?.hold(count)
        heldBytes += count
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            buffers?.release(count)
            heldBytes -= count
            done()
            // (Told only while some connection of the tenant waits for room — one that waits for this output is
            // on this loop, and registered by now — and on a later turn: a write can complete within a flush or
            // a close, in the middle of the handler's own work.)
            if heldBytes == 0, case .success = result, (buffers?.waitingForRoom ?? 0) > 0 {
                channel.eventLoop.assumeIsolated().execute { self.whenEmptied() }
            }
        }
        context.write(NIOAny(bytes), promise: promise)
    }

    /// One `send` of `bytes` (again if interrupted): the bytes taken, or -1.
    static func send(_ bytes: UnsafeRawBufferPointer, to socket: NIOBSDSocket.Handle) -> Int {
        while true {
            let sent = Glibc.send(socket, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if sent >= 0 || errno != EINTR { return sent }
        }
    }
}
