import MeshKernel

/// One send or receive call on a watched connection end, or its close, as
/// the kernel saw it.
public struct SocketIOEvent: Sendable, Equatable {
    /// What happened.
    public enum Kind: Sendable, Equatable {
        /// The workload wrote ``SocketIOEvent/length`` bytes.
        case send
        /// The workload read ``SocketIOEvent/length`` bytes.
        case receive
        /// The connection closed.
        case close
    }

    /// What happened.
    public var kind: Kind
    /// When, in nanoseconds of `CLOCK_MONOTONIC` (after the call returned).
    public var timestamp: UInt64
    /// The connection end: its socket cookie.
    public var connection: UInt64
    /// The process that made the call (0 for a close).
    public var pid: UInt32
    /// The watched workload's identity (0 for a close).
    public var identity: UInt32
    /// Bytes the call moved.
    public var length: Int
    /// The first bytes of the call's data, when the kernel judged that they
    /// start or continue a message head; empty for body calls.
    public var data: [UInt8]
    /// The call's last bytes (up to 8).
    public var tail: Tail
    /// This end's address.
    public var local: Endpoint
    /// The peer's address.
    public var remote: Endpoint

    /// Creates an event.
    public init(kind: Kind, timestamp: UInt64, connection: UInt64, pid: UInt32 = 0, identity: UInt32 = 0, length: Int,
                data: [UInt8] = [], tail: Tail = Tail([]), local: Endpoint, remote: Endpoint) {
        self.kind = kind
        self.timestamp = timestamp
        self.connection = connection
        self.pid = pid
        self.identity = identity
        self.length = length
        self.data = data
        self.tail = tail
        self.local = local
        self.remote = remote
    }

    /// Decodes a ring-buffer record: the C header, then the captured bytes.
    /// Nil for a record that is too short or of an unknown kind.
    init?(record bytes: UnsafeRawBufferPointer) {
        let headerSize = MemoryLayout<HttpCaptureObject.HttpIoEvent>.size
        guard bytes.count >= headerSize else { return nil }
        let header = bytes.loadUnaligned(as: HttpCaptureObject.HttpIoEvent.self)
        let captured = Int(header.captured)
        guard bytes.count >= headerSize + captured else { return nil }
        switch HttpCaptureObject.HttpIoKind(rawValue: UInt32(header.kind)) {
        case .send: kind = .send
        case .receive: kind = .receive
        case .close: kind = .close
        default: return nil
        }
        timestamp = header.timestampNs
        connection = header.cookie
        pid = header.pid
        identity = header.identity
        length = Int(header.length)
        data = captured == 0 ? [] : Array(bytes[headerSize..<headerSize + captured])
        tail = Tail(packed: withUnsafeBytes(of: header.tail) { $0.loadUnaligned(as: UInt64.self) }, count: Int(min(header.tailLength, 8)))
        local = Endpoint(IPAddress(networkOrderWords: header.localAddress), port: header.localPort)
        remote = Endpoint(IPAddress(networkOrderWords: header.remoteAddress), port: header.remotePort)
    }
}

extension SocketIOEvent {
    /// Up to the last 8 bytes of a call, held inline (decoding an event allocates nothing for them).
    public struct Tail: Sendable, Equatable, RandomAccessCollection {
        private let packed: UInt64   // byte i in bits 8i..<8i+8
        /// How many bytes (0 to 8).
        public let count: Int

        /// The last (up to 8) bytes of `bytes`.
        public init(_ bytes: some Collection<UInt8>) {
            var packed: UInt64 = 0
            var count = 0
            for byte in bytes.suffix(8) {
                packed |= UInt64(byte) << (8 * count)
                count += 1
            }
            self.init(packed: packed, count: count)
        }

        init(packed: UInt64, count: Int) {
            self.packed = count == 8 ? packed : packed & ((1 << (8 * count)) - 1)
            self.count = count
        }

        public var startIndex: Int { 0 }
        public var endIndex: Int { count }
        public subscript(position: Int) -> UInt8 {
            precondition(position >= 0 && position < count, "tail index out of range")
            return UInt8(truncatingIfNeeded: packed >> (8 * position))
        }
    }
}
