import Glibc
import MeshTestSupport
import NIOCore
import NIOPosix
import Testing
@testable import MeshProxy

/// The handler whose context a ``SocketOutput`` writes from.
private final class Writer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
}

@Suite("SocketOutput: straight to the socket while NIO holds none of the output")
struct SocketOutputTests {
    @Test("what the socket does not take goes through NIO, and what is written after it follows it there even once the socket has room again: the peer reads everything in order; what NIO holds counts in the tenant's buffers until written, and its writing it all out is told once")
    func orderKeptBehindNIO() async throws {
        let (peer, proxy) = try loopbackPeerPair()
        defer { close(peer) }
        // Small buffers, so that the first write is taken only in part.
        var size: Int32 = 65_536
        setsockopt(proxy, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Writer()) } }
            .withConnectedSocket(proxy)
            .get()
        defer { channel.close(promise: nil) }
        let first = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let second = [UInt8](repeating: 0xEE, count: 65_536)
        // On the channel's loop, in one go: NIO cannot write out what it holds meanwhile.
        // A tenant held at its cap by its other connections, one of which waits for room: the output's emptying is told.
        let others = 16_384
        let buffers = TenantBuffers()
        buffers.update(TenantLimits(maxTotalBufferedBytes: others))
        buffers.hold(others)
        _ = buffers.waitForRoom {}
        let emptied = Tally()
        let (drained, heldByNIO, counted) = try await channel.eventLoop.submit {
            let context = try channel.pipeline.syncOperations.context(handlerType: Writer.self)
            let output = SocketOutput(context, buffers: buffers, whenEmptied: { emptied.add() })
            output.write(context.channel.allocator.buffer(bytes: first), context)
            output.flush(context)
            // (Past NIO's high-water mark: it holds most of the 4 MiB.)
            let heldByNIO = !channel.isWritable
            let counted = buffers.heldBytes - others
            // Room in the socket again: a straight send of the second write would now overtake the first's rest.
            var drained: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while drained.count < 1 << 20 {
                let count = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard count > 0 else { break }
                drained += buffer[..<count]
            }
            output.write(context.channel.allocator.buffer(bytes: second), context)
            output.flush(context)
            return (drained, heldByNIO, counted)
        }.get()
        #expect(heldByNIO, "the socket took all of 4 MiB at once: nothing went through NIO")
        #expect(counted > 1 << 20 && counted < first.count, "what NIO holds of the first write is counted: \(counted)")
        #expect(!drained.isEmpty)
        let expected = first + second
        let rest = try await offload { receive(peer, count: expected.count - drained.count) }
        #expect(drained.count + rest.count == expected.count)
        let inOrder = drained + rest == expected   // (a Boolean: swift-testing's diff of 4 MiB arrays would not end)
        #expect(inOrder, "the bytes arrived out of order")
        #expect(await eventually(timeout: .seconds(10)) { buffers.heldBytes == others }, "written out, let go: \(buffers.heldBytes - others)")
        // Both writes went through NIO and were out together: one emptying, told on a later turn of the loop.
        #expect(await eventually(timeout: .seconds(10)) { emptied.value > 0 })
        try await channel.eventLoop.submit {}.get()   // (a turn after it: a second telling would be in by now)
        #expect(emptied.value == 1, "told empty \(emptied.value) times")
        #expect(buffers.waitingForRoom == 1, "the tenant stayed at its cap: the wait is still registered")
    }
}
