import NIOCore
import NIOSSL
import NIOTLS

/// Stands behind a connection's TLS handler until the handshake is done and
/// the client's identity is admitted, holding any plaintext that arrives with
/// the handshake's last flight; then hands the connection on and steps aside.
///
/// A handshake that fails, does not finish within its time, is cut short by
/// the client's end of input, or ends with a client identity that is not
/// allowed closes the connection, reported once through `refused`.
final class TLSHandshakeGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Called once the handshake is done with the client's identity (the one
    /// SPIFFE ID of its certificate under mutual TLS, else nil); the connection's handlers
    /// go in behind the gate, which opens when the returned future succeeds.
    typealias Established = (_ channel: any Channel, _ identity: String?) -> EventLoopFuture<Void>

    private let allowedIdentities: Set<String>?
    private let timeout: Duration
    private let established: Established
    private let refused: (String) -> Void
    /// What arrived behind the handshake, in order: plaintext and events (a half-close).
    private var held = HeldInbound()
    private var timer: Scheduled<Void>?
    /// The handshake is over (admitted or refused).
    private var done = false
    /// The connection's own handlers are in and what was held went to them.
    private var opened = false

    /// - Parameter allowedIdentities: nil admits any client; otherwise its
    ///   certificate must carry one of them (empty: any identity at all).
    init(allowedIdentities: Set<String>?, timeout: Duration, established: @escaping Established, refused: @escaping (String) -> Void) {
        self.allowedIdentities = allowedIdentities
        self.timeout = timeout
        self.established = established
        self.refused = refused
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            let (gate, context) = bound.value
            gate.refuse("no complete TLS handshake within \(gate.timeout)", context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        held.append(unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A client that ends its side before the handshake is done can never finish it (its last
        // flight would follow): close now, not at the timeout, which would hold the connection meanwhile.
        if !done, case ChannelEvent.inputClosed? = event as? ChannelEvent {
            return refuse("the client closed during the TLS handshake", context: context)
        }
        guard case TLSUserEvent.handshakeCompleted = event, !done else {
            // Behind the gate, an event waits with the data, so it cannot overtake it.
            if done, !opened { held.append(event: event) } else { context.fireUserInboundEventTriggered(event) }
            return
        }
        timer?.cancel()
        let identities = peerIdentities(context)
        var identity: String?
        if let allowed = allowedIdentities {
            // A workload certificate names exactly one SPIFFE ID (as an X509-SVID does): that is who the client is.
            guard identities.count == 1, let only = identities.first, only.hasPrefix("spiffe://") else {
                return refuse("the client certificate must carry exactly one spiffe:// URI SAN, not \(identities)", context: context)
            }
            guard allowed.isEmpty || allowed.contains(only) else {
                return refuse("client identity \(only) is not allowed", context: context)
            }
            identity = only
        }
        done = true
        // Nothing more is read until the connection's own handlers are in.
        context.channel.setAutoRead(false)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        established(context.channel, identity).whenComplete { result in
            let (gate, context) = bound.value
            guard case .success = result else {
                // (Whatever failed — an unreachable upstream, no original destination — was counted and logged where it happened.)
                context.close(promise: nil)
                return
            }
            gate.opened = true
            gate.held.release(after: context)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard done else { return refuse("TLS handshake failed: \(error)", context: context) }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { refuse("the client closed during the TLS handshake", context: context) }
        context.fireChannelInactive()
    }

    private func refuse(_ reason: String, context: ChannelHandlerContext) {
        guard !done else { return }
        done = true
        timer?.cancel()
        held.removeAll()
        refused(reason)
        context.close(promise: nil)
    }

    /// The URI subject alternative names of the client's certificate.
    private func peerIdentities(_ context: ChannelHandlerContext) -> [String] {
        guard let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
              let certificate = handler.peerCertificate else { return [] }
        return certificate._subjectAlternativeNames().compactMap { name in
            name.nameType == .uri ? String(decoding: Array(name.contents), as: UTF8.self) : nil
        }
    }
}

/// Why the proxy refused a TLS handshake before it began.
enum TLSRefusal: Error, CustomStringConvertible {
    /// The tenant has no certificate for the name the client asked for, and no default.
    case noCertificate(serverName: String?)

    var description: String {
        switch self {
        case .noCertificate(let name): "no certificate for server name \(name ?? "(none sent)")"
        }
    }
}
