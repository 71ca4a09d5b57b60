import NIOCore

/// One TCP connection as a proxy handler drives it, on the connection's
/// event loop: writes go out at the next flush, reading pauses and resumes,
/// and the connection closes at once or once its writes are out. Two kinds:
/// a NIO channel's (``ChannelTransport``), and a socket on a splice loop
/// (``LoopSocket``), whose reads cost no pipeline.
///
/// What the connection reads and how it ends reach its handler as a
/// ``StreamTransportDelegate``.
protocol StreamTransport: AnyObject {
    /// The loop the connection, and its handler, live on.
    var eventLoop: any EventLoop { get }
    /// Whether the connection is open.
    var isActive: Bool { get }
    /// Whether it takes more writes now: its bytes not yet sent are under its limit.
    var isWritable: Bool { get }
    /// The bytes written that the socket has not taken yet and the transport
    /// holds (counted in the tenant's ``TenantBuffers``).
    var heldBytes: Int { get }
    /// The peer's address, if known.
    var remoteAddress: SocketAddress? { get }
    /// Whether bytes from the peer wait unread in the socket; nil when that
    /// cannot be told (a TLS connection, whose bytes may also be held on the
    /// way, or a connection without a socket).
    var hasUnreadInput: Bool? { get }
    /// Writes `bytes`; they go out at the next ``flush()``.
    func write(_ bytes: ByteBuffer)
    /// Sends what was written.
    func flush()
    /// Reads on, or pauses reading (the peer's bytes wait in the kernel).
    func setReading(_ on: Bool)
    /// Closes the connection now; what was written and not sent is dropped.
    func close()
    /// Reads no more, sends what was written, and closes once all of it has gone.
    func closeAfterWrites()
}

/// What a ``StreamTransport`` tells its handler, on the connection's loop.
protocol StreamTransportDelegate: AnyObject {
    /// Bytes read from the peer. On a splice loop they lie in the loop's
    /// ``ReceiveBuffer``, which the next read reuses unless it is still held:
    /// what is kept beyond the call is kept as a copy.
    func transportRead(_ bytes: ByteBuffer)
    /// What one readiness of the connection read has been told (a point to send what it made).
    func transportReadComplete()
    /// The peer will send no more (it shut down its side); the connection is still open for writes.
    func transportInputClosed()
    /// The connection failed (it closes next).
    func transportFailed(_ error: any Error)
    /// The connection closed.
    func transportClosed()
    /// ``StreamTransport/isWritable`` changed.
    func transportWritabilityChanged()
    /// What the transport held of its output (``StreamTransport/heldBytes``)
    /// is all sent — not told when a failure or a close drops it — and the
    /// call is not within one of the handler's own calls to the transport: a
    /// reader waiting on the tenant's cap for it looks again.
    func transportOutputEmptied()
    /// The closed connection lets its handler go (after ``transportClosed()``, on a later turn of its loop).
    func transportDetached()
}
