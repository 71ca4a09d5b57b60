import Glibc
import MeshKernel
import NIOCore

/// A TCP socket on a ``SpliceLoop`` as a ``StreamTransport``: what NIO's
/// channel does for an HTTP handler, at the cost of one `recv` and one
/// `send` a message and no pipeline. Each readiness reads once, into the
/// loop's ``ReceiveBuffer``, lent to the delegate for the read. Writes go straight to
/// the socket at a flush, and what it does not take waits, in order and in
/// a copy of its own, for it to drain (the transport is not writable while
/// that is over its limit).
///
/// Its events come as NIO's would: a read and its completion, the peer's
/// half-close (or, with `closesOnInputEnd`, a close), a failure then the
/// close, and — on a later turn of the loop, once nothing of the close is
/// running — the handler's release (``StreamTransportDelegate/transportDetached()``).
/// A send that fails sends nothing more, and is told as the failure once
/// reading has taken what the peer sent before it (where NIO would close at
/// once, losing that: an upstream's early answer, say).
///
/// Used on its loop's thread only. Its state is `@exclusivity(unchecked)`,
/// for the reason ``HTTPProxyHandler``'s is.
final class LoopSocket: StreamTransport {
    let loop: SpliceLoop
    let descriptor: Int32
    /// Its key in the loop's table (``SpliceLoop/reserveID()``).
    let key: UInt64
    /// What the loop's epoll tells its events under (set as it is registered).
    @exclusivity(unchecked) var pollKey: UInt64 = 0
    let remoteAddress: SocketAddress?
    /// The unsent bytes beyond which the socket is not writable.
    private let writeBufferLimit: Int
    /// Close at the peer's end of output (an upstream's), instead of telling it as a half-close.
    private let closesOnInputEnd: Bool
    /// Where the unsent bytes are held in the tenant's account.
    private let buffers: TenantBuffers?
    @exclusivity(unchecked) private var delegate: (any StreamTransportDelegate)?
    @exclusivity(unchecked) private var open = true
    @exclusivity(unchecked) private var reading = false
    @exclusivity(unchecked) private var inputEnded = false
    /// Told how a connect ends, while it is under way.
    @exclusivity(unchecked) private var connecting: ((Result<Void, any Error>) -> Void)?
    @exclusivity(unchecked) private var connectTimer: Scheduled<Void>?
    /// Written, not yet flushed.
    @exclusivity(unchecked) private var unflushed: [ByteBuffer] = []
    /// Flushed, not yet taken by the socket (it waits for the socket to drain).
    @exclusivity(unchecked) private var unsent: [ByteBuffer] = []
    @exclusivity(unchecked) private var unsentBytes = 0
    @exclusivity(unchecked) private var writable = true
    @exclusivity(unchecked) private var closingWhenSent = false
    /// Why a send failed: nothing more is sent, and the end is told as this failure (``writeFailed(_:)``).
    @exclusivity(unchecked) private var writeError: Errno?
    /// What epoll watches for now.
    @exclusivity(unchecked) private var interest = EventPoll.Events.none

    private static let allocator = ByteBufferAllocator()

    /// Told once, when the socket closes.
    @exclusivity(unchecked) var whenClosed: (() -> Void)?

    private init(_ descriptor: Int32, key: UInt64, on loop: SpliceLoop, remoteAddress: SocketAddress?, writeBufferLimit: Int,
                 buffers: TenantBuffers?, closesOnInputEnd: Bool) {
        self.loop = loop
        self.buffers = buffers
        self.descriptor = descriptor
        self.key = key
        self.remoteAddress = remoteAddress
        self.writeBufferLimit = max(writeBufferLimit, 1)
        self.closesOnInputEnd = closesOnInputEnd
    }

    /// Takes over `descriptor`, a connected TCP socket from `remoteAddress` (on the loop's thread),
    /// as `key` (``SpliceLoop/reserveID()``): it is made non-blocking and registered for
    /// reading; what it reads is told once its delegate is set with ``start(_:)``, which must come
    /// before the loop's next turn. What waits to be sent is held in `buffers`.
    /// Throws (closing it) when it cannot be registered.
    static func adopting(_ descriptor: Int32, key: UInt64, remoteAddress: SocketAddress?, on loop: SpliceLoop,
                         writeBufferLimit: Int, buffers: TenantBuffers?) throws(Errno) -> LoopSocket {
        loop.preconditionInEventLoop()
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0, fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            let error = Errno.current
            Glibc.close(descriptor)
            throw error
        }
        let socket = LoopSocket(descriptor, key: key, on: loop, remoteAddress: remoteAddress, writeBufferLimit: writeBufferLimit,
                                buffers: buffers, closesOnInputEnd: false)
        do {
            try socket.register(reading: true)
        } catch {
            Glibc.close(descriptor)
            throw error
        }
        return socket
    }

    /// Connects to `address` (on the loop's thread); `completion` gets the
    /// connected socket, which it is to ``start(_:)`` with its delegate at once,
    /// or why not: the connect's error, or `ChannelError.connectTimeout` after `timeout`.
    /// What waits to be sent is held in `buffers`.
    static func connect(to address: SocketAddress, on loop: SpliceLoop, timeout: TimeAmount, writeBufferLimit: Int, buffers: TenantBuffers?,
                        completion: @escaping (Result<LoopSocket, any Error>) -> Void) {
        loop.preconditionInEventLoop()
        let descriptor = Glibc.socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return completion(.failure(Errno.current)) }
        var one: Int32 = 1
        _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.withSockAddr { Glibc.connect(descriptor, $0, socklen_t($1)) }
        guard result == 0 || errno == EINPROGRESS else {
            let error = Errno.current
            Glibc.close(descriptor)
            return completion(.failure(error))
        }
        let socket = LoopSocket(descriptor, key: loop.reserveID(), on: loop, remoteAddress: address,
                                writeBufferLimit: writeBufferLimit, buffers: buffers, closesOnInputEnd: true)
        if result != 0 {
            socket.connecting = { result in completion(result.map { socket }) }
        }
        do {
            try socket.register(reading: result == 0)
        } catch {
            socket.connecting = nil
            Glibc.close(descriptor)
            return completion(.failure(error))
        }
        guard result != 0 else { return completion(.success(socket)) }
        let bound = NIOLoopBound(socket, eventLoop: loop)
        socket.connectTimer = loop.scheduleTask(in: timeout) { bound.value.connectEnded(.failure(ChannelError.connectTimeout(timeout))) }
    }

    /// Takes the socket into its loop's epoll: reading with `reading`, or
    /// waiting for its connect. (One registration: what the socket waits for
    /// from the start, not a change of it right after.)
    private func register(reading: Bool) throws(Errno) {
        self.reading = reading
        var wanted = EventPoll.Events.none
        if reading { wanted = wanted.adding(.readable) }
        if connecting != nil { wanted = wanted.adding(.writable) }
        try loop.register(self, for: wanted)
        interest = wanted
    }

    /// Starts telling `delegate` what the socket reads and how it ends; it
    /// reads from now on. (Called on the loop's thread before its next turn:
    /// nothing read is told before.)
    func start(_ delegate: any StreamTransportDelegate) {
        self.delegate = delegate
        setReading(true)
    }

    // MARK: - StreamTransport

    var eventLoop: any EventLoop { loop }
    var isActive: Bool { open && connecting == nil }
    var isWritable: Bool { writable }
    var heldBytes: Int { unsentBytes }
    var hasUnreadInput: Bool? { UnreadInput.exists(on: descriptor) }

    func write(_ bytes: ByteBuffer) {
        guard open, writeError == nil else { return }
        if unsent.isEmpty, connecting == nil {
            unflushed.append(bytes)
        } else {
            queueUnsent(bytes)
            noteWritability()
        }
    }

    func flush() {
        guard open, !unflushed.isEmpty else { return }
        var index = 0
        while index < unflushed.count {
            let sent = unflushed[index].withUnsafeReadableBytes { SocketOutput.send($0, to: descriptor) }
            if sent == unflushed[index].readableBytes {
                index += 1
                continue
            }
            if sent < 0, errno != EAGAIN { return writeFailed(.current) }
            // The socket takes no more now: the rest waits for it to drain, in order.
            unflushed[index].moveReaderIndex(forwardBy: max(sent, 0))
            for bytes in unflushed[index...] { queueUnsent(bytes) }
            break
        }
        unflushed.removeAllOneByOne()
        guard !unsent.isEmpty else { return }
        updateInterest()
        noteWritability()
    }

    func setReading(_ on: Bool) {
        guard open, reading != on else { return }
        reading = on
        updateInterest()
    }

    func close() {
        guard open else { return }
        open = false
        loop.unregister(self)
        Glibc.close(descriptor)
        unflushed.removeAllOneByOne()
        unsent.removeAllOneByOne()
        buffers?.release(unsentBytes)
        unsentBytes = 0
        connectTimer?.cancel()
        connectTimer = nil
        if let connecting {
            self.connecting = nil
            connecting(.failure(ChannelError.ioOnClosedChannel))
        }
        if let told = whenClosed {
            whenClosed = nil
            told()
        }
        guard let delegate else { return }
        delegate.transportClosed()
        self.delegate = nil
        // (Released on a later turn, as NIO removes a closed channel's handlers.)
        let released = NIOLoopBound(delegate, eventLoop: loop)
        loop.execute { released.value.transportDetached() }
    }

    /// Asks the socket's handler to close gracefully (``GracefulClosing``), if it can.
    func closeGracefully() {
        (delegate as? any GracefulClosing)?.closeGracefully()
    }

    func closeAfterWrites() {
        guard open else { return }
        setReading(false)
        flush()
        guard open else { return }
        if unsent.isEmpty {
            let socket = NIOLoopBound(self, eventLoop: loop)
            loop.execute { socket.value.close() }
        } else {
            closingWhenSent = true
        }
    }

    // MARK: - Events, on the loop's thread

    /// What epoll reported for the socket; `received` is the loop's receive buffer.
    func handle(_ events: EventPoll.Events, reading received: inout ReceiveBuffer) {
        guard open else { return }
        if connecting != nil {
            let error = Errno.pendingIfAny(onSocket: descriptor)
            connectEnded(error.map { .failure($0) } ?? .success(()))
            return
        }
        if events.overlaps(.writable) {
            sendUnsent()
            guard open else { return }
        }
        if reading, !inputEnded, events.overlaps(Self.readableOrEnded) {
            readOnce(into: &received)
        } else if events.overlaps(Self.broken) {
            // Broken while not reading (a reset): nothing can be read or sent any more.
            fail(writeError ?? Errno.pending(onSocket: descriptor))
        }
    }

    private static let readableOrEnded = EventPoll.Events.readable.adding(.hangUp).adding(.error)
    private static let broken = EventPoll.Events.hangUp.adding(.error)

    private func readOnce(into received: inout ReceiveBuffer) {
        // (A tenant with a cap or a bandwidth reads in small steps: both are checked between them.)
        let limit = buffers?.readsInSmallSteps == true ? TenantBuffers.cappedReadSize : ReceiveBuffer.capacity
        let (count, allocated) = received.receive(from: descriptor, limit: limit)
        if allocated { loop.receiveBuffersAllocated.add(1, ordering: .relaxed) }
        if count > 0 {
            delegate?.transportRead(received.bytes)
            if open { delegate?.transportReadComplete() }
        } else if count == 0 {
            // (After a failed send the end is that failure: the send took the socket's error.)
            if let writeError { return fail(writeError) }
            inputEnded = true
            if closesOnInputEnd { return close() }
            updateInterest()
            delegate?.transportInputClosed()
        } else if errno != EAGAIN, errno != EINTR {
            fail(.current)
        }
    }

    private func connectEnded(_ result: Result<Void, any Error>) {
        guard let connecting else { return }
        self.connecting = nil
        connectTimer?.cancel()
        connectTimer = nil
        switch result {
        case .success:
            // (It reads from now on: its start, before the loop's next turn, tells its delegate.)
            reading = true
            do {
                try applyInterest()
            } catch {
                // (Nobody would hear a failure told now: the connect's caller is told why.)
                connecting(.failure(error))
                return close()
            }
            connecting(.success(()))
        case .failure(let error):
            connecting(.failure(error))
            close()
        }
    }

    /// Sends what waits for the socket, as far as it takes it.
    private func sendUnsent() {
        let hadUnsent = !unsent.isEmpty
        while !unsent.isEmpty {
            let sent = unsent[0].withUnsafeReadableBytes { SocketOutput.send($0, to: descriptor) }
            if sent < 0 {
                guard errno == EAGAIN else { return writeFailed(.current) }
                break
            }
            unsentBytes -= sent
            buffers?.release(sent)
            guard sent == unsent[0].readableBytes else {
                unsent[0].moveReaderIndex(forwardBy: sent)
                break
            }
            unsent.removeFirst()
        }
        updateInterest()
        noteWritability()
        guard unsent.isEmpty else { return }
        if closingWhenSent { return close() }
        if open, hadUnsent { delegate?.transportOutputEmptied() }
    }

    /// Keeps `bytes` until the socket takes them, in a copy: they may lie in
    /// the loop's receive buffer, which the next read reuses. (The caller
    /// tells the writability once its own state is whole again: the delegate
    /// may write and flush from within.)
    private func queueUnsent(_ bytes: ByteBuffer) {
        unsent.append(Self.allocator.buffer(buffer: bytes))
        unsentBytes += bytes.readableBytes
        buffers?.hold(bytes.readableBytes)
    }

    /// Tells the delegate when the unsent bytes cross the limit.
    private func noteWritability() {
        let now = unsentBytes < writeBufferLimit
        guard now != writable else { return }
        writable = now
        if open { delegate?.transportWritabilityChanged() }
    }

    /// Watches for what the socket waits for now: reading, draining, connecting.
    private func updateInterest() {
        do {
            try applyInterest()
        } catch {
            fail(error)
        }
    }

    /// Makes epoll watch for what the socket waits for now, if that changed.
    private func applyInterest() throws(Errno) {
        guard open else { return }
        var wanted = EventPoll.Events.none
        if reading, !inputEnded, connecting == nil { wanted = wanted.adding(.readable) }
        if !unsent.isEmpty || connecting != nil { wanted = wanted.adding(.writable) }
        guard wanted.rawValue != interest.rawValue else { return }
        try loop.watch(self, for: wanted)
        interest = wanted
    }

    /// A send failed (the peer reset the connection): nothing more is sent,
    /// and the failure is told when reading comes to it — after what the peer
    /// sent before it (an answer, say, to a request it would not read whole),
    /// or at the next turn when the socket is not being read.
    private func writeFailed(_ error: Errno) {
        writeError = error
        unflushed.removeAllOneByOne()
        unsent.removeAllOneByOne()
        buffers?.release(unsentBytes)
        unsentBytes = 0
        updateInterest()
        noteWritability()
    }

    /// Tells the failure, then closes (unless the delegate closed already).
    private func fail(_ error: Errno) {
        guard open else { return }
        delegate?.transportFailed(error)
        close()
    }
}
