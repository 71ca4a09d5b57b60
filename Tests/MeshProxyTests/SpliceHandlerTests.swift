import NIOCore
import NIOEmbedded
import Synchronization
import Testing
@testable import MeshProxy

@Suite("Splicing two connections, on embedded channels")
struct SpliceHandlerTests {
    /// Bytes counted per side.
    final class Counted: Sendable {
        let fromClient = Atomic<Int>(0), fromUpstream = Atomic<Int>(0)
    }

    /// Two embedded channels on one loop, spliced.
    private func spliced(idleTimeout: TimeAmount? = nil, bandwidth: TokenBucket? = nil, on loop: EmbeddedEventLoop = EmbeddedEventLoop()) throws
        -> (client: EmbeddedChannel, upstream: EmbeddedChannel, counted: Counted) {
        let client = EmbeddedChannel(loop: loop), upstream = EmbeddedChannel(loop: loop)
        let counted = Counted()
        let (one, other) = SpliceHandler.pair(countingFirst: { counted.fromClient.add($0, ordering: .relaxed) },
                                              second: { counted.fromUpstream.add($0, ordering: .relaxed) }, bandwidth: bandwidth,
                                              idleTimeout: idleTimeout)
        try client.pipeline.syncOperations.addHandler(one)
        try upstream.pipeline.syncOperations.addHandler(other)
        // Embedded channels start inactive: connected, a close can be seen.
        let peer = try SocketAddress(ipAddress: "127.0.0.1", port: 9)
        try client.connect(to: peer).wait()
        try upstream.connect(to: peer).wait()
        return (client, upstream, counted)
    }

    @Test("bytes cross in both directions, in order, and are counted")
    func forwards() throws {
        let (client, upstream, counted) = try spliced()
        try client.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        try client.writeInbound(ByteBuffer(string: "\r\n"))
        #expect(try upstream.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(try upstream.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "\r\n"))
        try upstream.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"))
        #expect(try client.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"))
        #expect(counted.fromClient.load(ordering: .relaxed) == 18 && counted.fromUpstream.load(ordering: .relaxed) == 19)
    }

    @Test("a side stops reading while its partner cannot take more, and resumes when it can")
    func backpressure() throws {
        let (client, upstream, _) = try spliced()
        let reads = ReadCounter()
        try client.pipeline.syncOperations.addHandler(reads, position: .first)
        upstream.isWritable = false
        client.read()
        #expect(reads.count == 0, "read while the upstream was not writable")
        upstream.isWritable = true
        upstream.pipeline.fireChannelWritabilityChanged()
        #expect(reads.count == 1, "the pending read was not resumed")
    }

    @Test("a side waiting out the tenant's bandwidth does not read when its partner drains meanwhile; it reads again once the wait is over")
    func waitOutlastsPartnerDrain() throws {
        let loop = EmbeddedEventLoop()
        let bucket = TokenBucket(rate: 1_024, burst: 1_024)
        let (client, upstream, _) = try spliced(bandwidth: bucket, on: loop)
        let reads = ReadCounter()
        try upstream.pipeline.syncOperations.addHandler(reads, position: .first)
        try upstream.writeInbound(ByteBuffer(repeating: 0x61, count: 4_096))   // three seconds' debt: the upstream side waits
        _ = try client.readOutbound(as: ByteBuffer.self)
        // A read asked for while the client cannot take more is held for later ...
        client.isWritable = false
        upstream.read()
        #expect(reads.count == 0)
        // ... and the client draining (its peer reading again) must not start it while the wait lasts.
        client.isWritable = true
        client.pipeline.fireChannelWritabilityChanged()
        #expect(reads.count == 0, "read while waiting out the bandwidth")
        // The debt forgiven (a raised rate), the wait over: reads go through again.
        bucket.update(rate: 1 << 30, burst: 1 << 30)
        loop.advanceTime(by: .seconds(4))
        upstream.read()
        #expect(reads.count == 1)
    }

    @Test("a pair silent in both directions for the idle timeout is closed; reads on either side keep it open")
    func idleTimeout() throws {
        let loop = EmbeddedEventLoop()
        let (client, upstream, _) = try spliced(idleTimeout: .milliseconds(400), on: loop)
        for _ in 0..<3 {
            loop.advanceTime(by: .milliseconds(300))
            try upstream.writeInbound(ByteBuffer(string: "more"))   // only the upstream talks: still activity
        }
        loop.advanceTime(by: .milliseconds(300))
        try client.writeInbound(ByteBuffer(string: "ack"))
        loop.advanceTime(by: .milliseconds(399))
        #expect(client.isActive && upstream.isActive, "closed within the timeout of a read")
        loop.advanceTime(by: .milliseconds(101))
        #expect(!client.isActive && !upstream.isActive, "open after the timeout and a quarter of silence")
    }

    @Test("a side left open after its partner ended cleanly is still closed once silent for the idle timeout")
    func idleTimeoutOfTheSurvivor() throws {
        let loop = EmbeddedEventLoop()
        let (client, upstream, _) = try spliced(idleTimeout: .milliseconds(400), on: loop)
        try upstream.pipeline.syncOperations.addHandler(HalfCloseLikeASocket(), position: .first)
        loop.advanceTime(by: .milliseconds(300))
        // The client ends cleanly (its input, then the connection): the upstream's output is shut down, the upstream stays.
        client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try client.close().wait()
        #expect(!client.isActive && upstream.isActive)
        loop.advanceTime(by: .milliseconds(399))
        #expect(upstream.isActive, "closed within the timeout of the client's end")
        loop.advanceTime(by: .milliseconds(101))
        #expect(!upstream.isActive, "the upstream stayed open after the timeout and a quarter of silence")
    }

    @Test("the close of one side closes the other")
    func closes() throws {
        let (client, upstream, _) = try spliced()
        try upstream.close().wait()
        #expect(!client.isActive)
    }
}

/// Shuts a channel's output down the way a socket does, leaving the channel
/// open (an embedded channel closes altogether on an output close).
private final class HalfCloseLikeASocket: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output { promise?.succeed(()) } else { context.close(mode: mode, promise: promise) }
    }
}

/// Counts the reads that reach the channel.
private final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var count = 0
    func read(context: ChannelHandlerContext) {
        count += 1
        context.read()
    }
}

@Suite("Token buckets")
struct TokenBucketTests {
    @Test("a bucket gives its burst at once, then its rate; debt tells how long to wait")
    func bucket() {
        let bucket = TokenBucket(rate: 1_000_000, burst: 1_000_000)
        #expect(bucket.take(1_000_000) == .zero)
        let debt = bucket.take(500_000)
        // (Half a second of debt, less what refilled between the two takes: a few milliseconds, but up to
        // 250 ms allowed, as a loaded machine may hold this test's thread that long between two lines.)
        #expect(debt > .milliseconds(250) && debt <= .milliseconds(500), "\(debt)")
        let rate = TokenBucket(rate: 3, burst: 3)
        #expect(rate.tryTake() && rate.tryTake() && rate.tryTake())
        #expect(!rate.tryTake())
    }
}
