@testable import MeshProxy
import NIOCore
import NIOEmbedded
import NIOTLS
import Synchronization
import Testing

/// The gate behind a connection's TLS handler, on `EmbeddedChannel`.
@Suite("TLS handshake gate")
struct TLSHandshakeGateTests {
    /// A gate on a fresh channel, and what it reported.
    private final class Gated: Sendable {
        let refusals = Mutex<[String]>([])
        let establishments = Mutex(0)
    }

    private func gate(on channel: EmbeddedChannel, _ gated: Gated) throws {
        let gate = TLSHandshakeGate(allowedIdentities: nil, timeout: .seconds(10),
                                    established: { channel, _ in
                                        gated.establishments.withLock { $0 += 1 }
                                        return channel.eventLoop.makeSucceededVoidFuture()
                                    },
                                    refused: { reason in gated.refusals.withLock { $0.append(reason) } })
        try channel.pipeline.syncOperations.addHandler(gate)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    @Test("a client that ends its input before the handshake is done is refused and closed at once, not at the timeout")
    func inputClosedDuringHandshake() throws {
        let channel = EmbeddedChannel(), gated = Gated()
        try gate(on: channel, gated)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(gated.refusals.withLock { $0 } == ["the client closed during the TLS handshake"])
        #expect(!channel.isActive)
        #expect(gated.establishments.withLock { $0 } == 0)
    }

    @Test("after the handshake an end of input is the connection's own: it is passed on, and the connection stays open")
    func inputClosedAfterHandshake() throws {
        let channel = EmbeddedChannel(), gated = Gated()
        try gate(on: channel, gated)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        #expect(gated.establishments.withLock { $0 } == 1)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(gated.refusals.withLock { $0 }.isEmpty)
        #expect(channel.isActive)
        _ = try channel.finish()
    }
}
