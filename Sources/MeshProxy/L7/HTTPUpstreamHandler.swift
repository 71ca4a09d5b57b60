import MeshTelemetry
import NIOCore

/// A response from an upstream, as the upstream end of a pooled connection
/// hands it to the request's handler: the head parsed, the body as the bytes
/// came.
enum UpstreamResponsePart {
    /// The response head (an interim one, 1xx, is followed by another);
    /// `endsWithClose` when the body ends only with the connection. `wire`
    /// is the head as it came followed by the body bytes that came with it,
    /// so that a head forwarded unchanged goes out with them in one write.
    case head(HTTPWireHead, endsWithClose: Bool = false, wire: ByteBuffer)
    /// Body bytes, chunk framing included, as the upstream sent them.
    case body(ByteBuffer)
    /// The response is whole; `reusable` when the connection can serve another request.
    case end(reusable: Bool)
}

/// The end of an upstream connection: it follows the response of the
/// request it is leased to (head, then body by its framing) and hands it to
/// that request's handler; between leases it has none, and anything the
/// upstream sends then closes the connection. A malformed response closes
/// the connection too, and the request's handler hears it broke off.
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class HTTPUpstreamHandler: ChannelInboundHandler, StreamTransportDelegate {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The upstream connection, while the handler is attached to it (through
    /// NIO: from this handler's place in the pipeline, TLS included).
    @exclusivity(unchecked) private(set) var transport: (any StreamTransport)?
    /// Told once when the connection closes (the pool forgets it).
    @exclusivity(unchecked) var whenClosed: (() -> Void)?

    @exclusivity(unchecked) private var downstream: NIOLoopBound<HTTPProxyHandler>?
    /// The method of the request being answered (a response to HEAD has no body).
    @exclusivity(unchecked) private var method = "GET"
    @exclusivity(unchecked) private var inbound: ByteBuffer?
    @exclusivity(unchecked) private var scanned = 0
    /// The last response's head once handed on, to parse the next one into
    /// (when nothing else holds it).
    @exclusivity(unchecked) private var spareHead: HTTPWireHead?
    /// The response body being read; nil while a head is awaited.
    @exclusivity(unchecked) private var body: HTTPWireBody?
    @exclusivity(unchecked) private var keepAlive = true
    /// The request asked the upstream to keep the connection (HTTP/1.1).
    @exclusivity(unchecked) private var requestKeepsAlive = true
    @exclusivity(unchecked) private var ended = false
    @exclusivity(unchecked) private var error: (any Error)?
    /// Where what its channel's output holds is counted (as a NIO channel's handler).
    private let buffers: TenantBuffers?

    /// A handler whose NIO channel's output is held in `buffers`.
    init(buffers: TenantBuffers?) {
        self.buffers = buffers
    }

    /// The connection now carries the response to a `method` request for
    /// `downstream`; without `keepAlive` it is not kept after the response.
    func attach(_ downstream: NIOLoopBound<HTTPProxyHandler>, method: String, keepAlive: Bool) {
        self.downstream = downstream
        self.method = method
        inbound = nil
        scanned = 0
        body = nil
        requestKeepsAlive = keepAlive
        self.keepAlive = keepAlive
        ended = false
        error = nil
    }

    func detach() { downstream = nil }

    /// Drives the upstream connection `transport` (once, before its first bytes).
    func attach(_ transport: any StreamTransport) { self.transport = transport }

    /// Writes request bytes to the upstream; they go out at the next ``flush()``.
    func write(_ bytes: ByteBuffer) { transport?.write(bytes) }

    /// Sends what was written.
    func flush() { transport?.flush() }

    // MARK: - The upstream connection's events

    func transportRead(_ buffer: ByteBuffer) {
        guard downstream != nil, !ended else {
            transport?.close()   // a response nobody asked for: the connection is not fit for reuse
            return
        }
        inbound.appendInput(buffer)
        do throws(HTTPWireError) {
            try process()
        } catch {
            self.error = UpstreamResponseError(reason: error.reason)
            transport?.close()
        }
        inbound.letGo(of: buffer)
    }

    func transportReadComplete() { downstream?.value.flushResponse() }

    /// (An upstream that half-closes ends its response, if that is how the
    /// response ends; else the connection's close reports it broke off.)
    func transportInputClosed() {}

    func transportFailed(_ error: any Error) {
        self.error = self.error ?? error
        transport?.close()
    }

    func transportClosed() {
        if let downstream, !ended {
            if case .untilClose? = body, error == nil {
                ended = true
                downstream.value.relay(.end(reusable: false))
            } else {
                downstream.value.upstreamBrokeOff(error)
            }
        }
        let told = whenClosed
        whenClosed = nil
        told?()
    }

    func transportWritabilityChanged() {
        if transport?.isWritable == true { downstream?.value.upstreamWritable() }
    }

    func transportOutputEmptied() { downstream?.value.roomMayAllow() }

    func transportDetached() { transport = nil }

    // MARK: - As a NIO channel's handler

    func handlerAdded(context: ChannelHandlerContext) { attach(ChannelTransport(context, buffers: buffers, delegate: self)) }

    func handlerRemoved(context: ChannelHandlerContext) { transportDetached() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { transportRead(unwrapInboundIn(data)) }

    func channelReadComplete(context: ChannelHandlerContext) {
        transportReadComplete()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        transportClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { transportFailed(error) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        transportWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    /// Hands on what the held bytes make of the response.
    private func process() throws(HTTPWireError) {
        while !ended, let downstream, var buffer = inbound {
            guard var framing = body else {
                guard let length = HTTPWireHead.length(in: buffer, scanned: &scanned) else {
                    if buffer.readableBytes > Self.maxHeadBytes { throw HTTPWireError(reason: "a response head larger than \(Self.maxHeadBytes) bytes") }
                    return
                }
                let arrived = buffer   // the head and what came behind it
                let head = try HTTPWireHead.response(buffer.readSlice(length: length)!, reusing: &spareHead)
                scanned = 0
                if head.status == 101 { throw HTTPWireError(reason: "101 Switching Protocols, which the proxy did not ask for") }
                if HTTPResponseHead.isInterimStatus(head.status) {
                    inbound = buffer
                    downstream.value.relay(.head(head, wire: head.bytes))
                    spare(head)
                    continue
                }
                var framing = try HTTPWireBody.response(head, toRequestMethod: method)
                keepAlive = requestKeepsAlive && head.keepsAlive(minorVersion: head.minorVersion)
                var endsWithClose = false
                if case .untilClose = framing { endsWithClose = true }
                keepAlive = keepAlive && !endsWithClose
                // The body bytes that came with the head go with it.
                let (count, complete) = try framing.advance(over: buffer)
                buffer.moveReaderIndex(forwardBy: count)
                inbound = buffer
                body = framing
                downstream.value.relay(.head(head, endsWithClose: endsWithClose, wire: arrived.getSlice(at: arrived.readerIndex, length: length + count)!))
                spare(head)
                if complete { return finish() }
                continue
            }
            let (count, complete) = try framing.advance(over: buffer)
            body = framing
            if count > 0 {
                let bytes = buffer.readSlice(length: count)!
                inbound = buffer
                downstream.value.relay(.body(bytes))
            }
            if complete { return finish() }
            if count == 0 { return }
        }
    }

    /// A head handed on is kept to be parsed into, without the bytes it was read in.
    private func spare(_ head: HTTPWireHead) {
        head.letGoOfBytes()
        spareHead = head
    }

    /// The response has ended.
    private func finish() {
        ended = true
        // Bytes after the response: the upstream is not speaking HTTP/1.1 as it should; not reused.
        // (The handler may hold another lease after this call.)
        downstream?.value.relay(.end(reusable: keepAlive && (inbound?.readableBytes ?? 0) == 0))
    }

    /// The largest response head read.
    private static let maxHeadBytes = 65_536
}

/// An upstream's response the proxy could not read.
struct UpstreamResponseError: Error, CustomStringConvertible {
    let reason: String
    var description: String { "malformed response: \(reason)" }
}
