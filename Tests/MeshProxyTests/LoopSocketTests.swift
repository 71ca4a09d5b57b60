import Glibc
import MeshKernel
import MeshTestSupport
import NIOCore
import Synchronization
import Testing
@testable import MeshProxy

@Suite("Sockets on a splice loop as an HTTP handler's transport, over loopback")
struct LoopSocketTests {
    /// What a loop socket told its handler, in order (on the loop's thread; read from the test's).
    final class Told: StreamTransportDelegate, Sendable {
        enum Event: Equatable {
            case read, readComplete, inputClosed, failed(Errno?), closed, detached, writable(Bool), emptied
        }

        let events = Mutex<[Event]>([])
        let bytes = Mutex<[UInt8]>([])
        /// The largest read told.
        let largestRead = Atomic<Int>(0)
        /// The socket told, for its writability.
        let socket = Mutex<LoopSocketHandle?>(nil)
        /// With `keepingReads`: every buffer a read was lent, kept as it was lent.
        let kept = Mutex<[ByteBuffer]>([])
        private let keepingReads: Bool

        init(keepingReads: Bool = false) { self.keepingReads = keepingReads }

        var all: [Event] { events.withLock { $0 } }
        /// The events besides reads and their completions.
        var ends: [Event] { all.filter { $0 != .read && $0 != .readComplete } }
        /// The events besides reads, their completions, changes of writability and emptied outputs.
        var lifecycle: [Event] { ends.filter { if case .writable = $0 { false } else { $0 != .emptied } } }

        private func note(_ event: Event) { events.withLock { $0.append(event) } }

        func transportRead(_ buffer: ByteBuffer) {
            bytes.withLock { $0 += buffer.readableBytesView }
            largestRead.max(buffer.readableBytes, ordering: .relaxed)
            if keepingReads { kept.withLock { $0.append(buffer) } }
            note(.read)
        }
        func transportReadComplete() { note(.readComplete) }
        func transportInputClosed() { note(.inputClosed) }
        func transportFailed(_ error: any Error) { note(.failed(error as? Errno)) }
        func transportClosed() { note(.closed) }
        func transportDetached() {
            note(.detached)
            socket.withLock { $0 = nil }
        }
        func transportWritabilityChanged() { note(.writable(socket.withLock { $0?.value.isWritable } ?? false)) }
        func transportOutputEmptied() { note(.emptied) }
    }

    /// Runs `body` with a splice loop and a loop socket on it over the proxy's end of a loopback pair,
    /// telling `told`; the peer's end is the test's (blocking, and the test's to close). The loop stops after `body`.
    private func withAdoptedSocket(writeBufferLimit: Int = 65_536, keepingReads: Bool = false, buffers: TenantBuffers? = nil,
                                   _ body: (SpliceLoop, Told, _ peer: Int32, LoopSocketHandle) async throws -> Void) async throws {
        let loop = try SpliceLoop(name: "test-socket")
        defer { loop.stop() }
        let told = Told(keepingReads: keepingReads)
        let (peer, proxy) = try loopbackPeerPair()
        let socket = try await loop.submit { () throws -> LoopSocketHandle in
            let socket = try LoopSocket.adopting(proxy, key: loop.reserveID(), remoteAddress: nil, on: loop, writeBufferLimit: writeBufferLimit,
                                                 buffers: buffers)
            told.socket.withLock { $0 = LoopSocketHandle(socket) }
            socket.start(told)
            return LoopSocketHandle(socket)
        }.get()
        try await body(loop, told, peer, socket)
    }

    @Test("what the peer sends is read in order and told; its half-close is told once and writes still reach it; closing once written sends all, then the peer reads its end; the handler hears the close, then is let go")
    func readsHalfCloseAndCloseAfterWrites() async throws {
        try await withAdoptedSocket { loop, told, peer, socket in
            defer { close(peer) }
            let sent = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try await offload { try sendAll(peer, sent) }
            shutdown(peer, Int32(SHUT_WR))
            #expect(await eventually(timeout: .seconds(10)) { told.ends == [.inputClosed] })
            #expect(told.bytes.withLock { $0 } == sent)
            let reply = (0..<8_000_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }   // more than the socket takes at once
            try await loop.submit {
                socket.value.write(ByteBuffer(bytes: reply))
                socket.value.closeAfterWrites()
            }.get()
            let received = try await offload { receiveToEnd(peer) }
            #expect(received.error == nil && received.bytes == reply)
            #expect(await eventually(timeout: .seconds(10)) { told.lifecycle == [.inputClosed, .closed, .detached] }, "\(told.ends)")
        }
    }

    @Test("a tenant with a cap or a bandwidth reads in small steps, one without in large ones", arguments: [
        (TenantLimits(), ReceiveBuffer.capacity), (TenantLimits(maxTotalBufferedBytes: 1 << 20), TenantBuffers.cappedReadSize),
        (TenantLimits(bytesPerSecond: 1 << 30), TenantBuffers.cappedReadSize),
    ])
    func readSizes(limits: TenantLimits, largest: Int) async throws {
        let buffers = TenantBuffers()
        buffers.update(limits)
        try await withAdoptedSocket(buffers: buffers) { loop, told, peer, socket in
            defer { close(peer) }
            // Sent while reading is paused: the reads then find more than either size waiting.
            try await loop.submit { socket.value.setReading(false) }.get()
            let sent = [UInt8](repeating: 7, count: 4 * ReceiveBuffer.capacity)
            try await offload { try sendAll(peer, sent) }
            try await loop.submit { socket.value.setReading(true) }.get()
            #expect(await eventually(timeout: .seconds(10)) { told.bytes.withLock { $0.count } == sent.count })
            #expect(told.largestRead.load(ordering: .relaxed) == largest)
        }
    }

    @Test("a handler that keeps the buffers its reads were lent finds each as it was lent: the next read gets new storage instead of writing over it, and is counted")
    func keptReadsAreNotOverwritten() async throws {
        try await withAdoptedSocket(keepingReads: true) { loop, told, peer, _ in
            defer { close(peer) }
            // Three messages of different bytes, each read (and kept) before the next is sent.
            let messages = (1...3).map { index in [UInt8](repeating: UInt8(ascii: "a") + UInt8(index), count: 1_000 * index) }
            for (index, message) in messages.enumerated() {
                try sendAll(peer, message)
                #expect(await eventually(timeout: .seconds(10)) { told.bytes.withLock { $0.count } == messages[...index].joined().count })
            }
            let kept = told.kept.withLock { $0 }
            #expect(kept.map { Array($0.readableBytesView) } == messages, "a kept read was written over")
            #expect(loop.receiveBuffersAllocated.load(ordering: .relaxed) == 3, "the first read, then one for each read after a kept one")
        }
    }

    @Test("a socket that takes no more makes the transport unwritable (told), what waits goes out in order as the peer reads, and it is writable again (told) once under its limit, and empty (told) once all is sent; what waits is held in the tenant's buffers until sent, or until the socket closes")
    func backpressure() async throws {
        let buffers = TenantBuffers()
        try await withAdoptedSocket(writeBufferLimit: 256 * 1024, buffers: buffers) { loop, told, peer, socket in
            defer { close(peer) }
            // 16 MiB, far more than the kernel's buffers between the two sockets hold, in 64 KiB writes.
            let chunks = (0..<256).map { index in [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 65_536) }
            let (wasWritable, held) = try await loop.submit { () -> ([Bool], Int) in
                var seen: [Bool] = []
                for chunk in chunks {
                    socket.value.write(ByteBuffer(bytes: chunk))
                    socket.value.flush()
                    seen.append(socket.value.isWritable)
                }
                return (seen, buffers.heldBytes)
            }.get()
            #expect(wasWritable.contains(false), "the socket never stopped taking writes")
            #expect(held > 8 << 20 && held < 16 << 20, "what waits for the socket is held: \(held)")
            #expect(told.ends.first == .writable(false))
            let received = try await offload { () -> [UInt8] in
                var bytes: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65_536)
                while bytes.count < 256 * 65_536 {
                    let count = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
                    guard count > 0 else { throw Errno.current }
                    bytes += buffer[..<count]
                }
                return bytes
            }
            #expect(received == Array(chunks.joined()), "the bytes arrived whole and in order")
            #expect(await eventually(timeout: .seconds(10)) { told.ends == [.writable(false), .writable(true), .emptied] }, "\(told.ends)")
            #expect(buffers.heldBytes == 0, "all sent: \(buffers.heldBytes)")
            // 16 MiB more that the peer does not read: the socket closes with most of it unsent.
            let unsent = try await loop.submit { () -> Int in
                for chunk in chunks { socket.value.write(ByteBuffer(bytes: chunk)) }
                socket.value.flush()
                return buffers.heldBytes
            }.get()
            #expect(unsent > 8 << 20)
            try await loop.submit { socket.value.close() }.get()
            #expect(buffers.heldBytes == 0, "let go with the socket: \(buffers.heldBytes)")
            #expect(await eventually(timeout: .seconds(10)) { told.ends == [.writable(false), .writable(true), .emptied, .writable(false), .closed, .detached] },
                    "closed unsent, it is not told empty: \(told.ends)")
        }
    }

    @Test("a reset while reading is paused is told as the failure it was, and the socket closes")
    func resetWhilePaused() async throws {
        try await withAdoptedSocket { loop, told, peer, socket in
            try await loop.submit { socket.value.setReading(false) }.get()
            try sendAll(peer, Array("unread".utf8))
            resetClose(peer)
            #expect(await eventually(timeout: .seconds(10)) { told.ends == [.failed(Errno(rawValue: ECONNRESET)), .closed, .detached] })
            #expect(told.bytes.withLock { $0.isEmpty })
        }
    }

    @Test("a send that fails on a reset peer does not lose what the peer sent before its reset: that is read and told first, then the failure")
    func answerBeforeReset() async throws {
        try await withAdoptedSocket { loop, told, peer, socket in
            let answer = Array("HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n".utf8)
            let wrote = try await loop.submit { () -> Bool in
                // On the loop, so that it reads nothing meanwhile: the peer answers and resets, then the socket sends.
                try? sendAll(peer, answer)
                resetClose(peer)
                // Until the reset has arrived (asked for nothing: the answer's POLLIN can come first and
                // alone on a loaded machine, and a hang-up is reported whatever is asked), 5 s at most.
                var hungUp = false
                let deadline = ContinuousClock.now + .seconds(5)
                while !hungUp && ContinuousClock.now < deadline {
                    var descriptor = pollfd(fd: socket.value.descriptor, events: 0, revents: 0)
                    _ = poll(&descriptor, 1, 100)
                    hungUp = descriptor.revents & Int16(POLLHUP) != 0
                }
                socket.value.write(ByteBuffer(bytes: [UInt8](repeating: 0x78, count: 1_000)))
                socket.value.flush()
                return hungUp
            }.get()
            #expect(wrote, "the reset had arrived before the send")
            #expect(await eventually(timeout: .seconds(10)) { told.ends.contains(.detached) })
            #expect(told.bytes.withLock { $0 } == answer)
            // The failure told is the send's (the send took the socket's error: the reads after the answer see only an end).
            let failed: [Told.Event] = [.failed(Errno(rawValue: EPIPE)), .failed(Errno(rawValue: ECONNRESET))]
            #expect(told.ends.count == 3 && failed.contains(told.ends[0]) && told.ends.suffix(2) == [.closed, .detached], "\(told.ends)")
            #expect(told.all.first == .read, "\(told.all)")
        }
    }

    @Test("connecting: to a listener it succeeds; to a closed port it fails with ECONNREFUSED; to a listener whose backlog is full it fails with a connect timeout")
    func connects() async throws {
        let loop = try SpliceLoop(name: "test-socket")
        defer { loop.stop() }
        func connect(_ port: UInt16, timeout: TimeAmount = .seconds(10)) async throws -> Result<Void, any Error> {
            let promise = loop.makePromise(of: Void.self)
            try await loop.submit {
                LoopSocket.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: Int(port)), on: loop, timeout: timeout, writeBufferLimit: 65_536,
                                   buffers: nil) { result in
                    switch result {
                    case .success(let socket):
                        socket.close()
                        promise.succeed()
                    case .failure(let error):
                        promise.fail(error)
                    }
                }
            }.get()
            do {
                return .success(try await promise.futureResult.get())
            } catch {
                return .failure(error)
            }
        }
        let (client, server, listener) = try connectedTCPPair()
        defer { [client, server].forEach { close($0) } }
        let port = try boundPort(of: listener)
        let connected = try await connect(port)
        #expect(throws: Never.self) { try connected.get() }
        close(listener)
        // A port nothing listens on, outside the ephemeral range: a freed ephemeral port could be the
        // connecting socket's own, and a socket connected to itself succeeds (TCP simultaneous open).
        let refused = try await connect(17_198)
        #expect(throws: Errno(rawValue: ECONNREFUSED)) { try refused.get() }
        // A listener with a backlog of 0 that never accepts: the first connection fills its queue, the next one's SYN is dropped.
        let (full, fullPort) = try listening(backlog: 0)
        defer { close(full) }
        let first = try await connect(fullPort)
        #expect(throws: Never.self) { try first.get() }
        let waited = ContinuousClock.now
        let timedOut = try await connect(fullPort, timeout: .milliseconds(300))
        #expect(throws: ChannelError.self) { try timedOut.get() }
        #expect(ContinuousClock.now - waited >= .milliseconds(300))
    }
}

/// A loop socket handed between the test and the loop's thread (used on the loop only).
struct LoopSocketHandle: @unchecked Sendable {
    let value: LoopSocket
    init(_ value: LoopSocket) { self.value = value }
}

/// Closes `socket` with a reset (`SO_LINGER` 0).
private func resetClose(_ socket: Int32) {
    var reset = linger(l_onoff: 1, l_linger: 0)
    setsockopt(socket, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
    close(socket)
}

/// The port `listener` is bound to.
private func boundPort(of socket: Int32) throws -> UInt16 {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let result = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) } }
    guard result == 0 else { throw Errno.current }
    return UInt16(bigEndian: address.sin_port)
}

/// A listener on 127.0.0.1 (any port) with `backlog`, and its port.
private func listening(backlog: Int32) throws -> (Int32, UInt16) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard bound, listen(listener, backlog) == 0 else {
        close(listener)
        throw Errno.current
    }
    return (listener, try boundPort(of: listener))
}
