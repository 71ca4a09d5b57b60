/// The sockmap shortcut: TCP connections between local sockets of a cgroup
/// exchange data socket-to-socket, without traversing the TCP/IP stack.
///
/// `sockops` puts each established IPv4/IPv6 TCP socket of the cgroup into a
/// sockhash keyed by its 4-tuple (``SocketKey``); an `sk_msg` program on that
/// sockhash redirects every `sendmsg` to the peer socket when the peer is in
/// the map too. Sockets leave the map when they close. Peers outside the mesh
/// are untouched.
///
/// ```swift
/// let acceleration = try SocketAcceleration(cgroup: workload)
/// // ... traffic ...
/// print(try acceleration.counters())
/// acceleration.detach()          // or release it
/// ```
public final class SocketAcceleration: Sendable {
    /// The loaded `sock_redirect` object.
    public let object: BPFObject
    /// The sockhash of accelerated sockets.
    public let sockets: SockHash<SocketKey>
    private let counterMap: ArrayMap<UInt64>
    private let links: [BPFLink]

    /// Counters kept by the datapath programs.
    public struct Counters: Sendable, Equatable, CustomStringConvertible {
        /// Established sockets put into the sockhash.
        public var socketsAdded: UInt64
        /// Accelerated sockets that have closed.
        public var socketsRemoved: UInt64
        /// `sendmsg` calls moved directly to the peer socket.
        public var messagesRedirected: UInt64
        /// Bytes in those calls.
        public var bytesRedirected: UInt64
        /// `sendmsg` calls with no local peer in the map (sent normally).
        public var messagesPassed: UInt64
        /// Sockets the sockhash had no room for (they are not accelerated: fail open).
        public var insertFailures: UInt64

        public var description: String {
            "sockets added \(socketsAdded), removed \(socketsRemoved); messages redirected \(messagesRedirected) (\(bytesRedirected) bytes), passed \(messagesPassed); insert failures \(insertFailures)"
        }
    }

    /// Loads the programs and attaches them to `cgroup`.
    ///
    /// - Parameter capacity: the most sockets accelerated at once; further
    ///   sockets use the normal stack and are counted in ``Counters/insertFailures``.
    public init(cgroup: Cgroup, capacity: Int = 65_536) throws(BPFError) {
        let object = try BPFObject.open(.sockRedirect)
        try object.map("sock_hash").setMaxEntries(capacity)
        try object.load()
        self.object = object
        sockets = try SockHash(object.map("sock_hash"))
        counterMap = try ArrayMap(object.map("accel_counters"))
        let verdict = try object.program("redirect_to_peer").attach(toSockMap: sockets.map)
        let sockOps = try object.program("accelerate_sockets").attach(to: cgroup)
        links = [sockOps, verdict]
    }

    /// Reads the datapath's counters.
    public func counters() throws(BPFError) -> Counters {
        let values = try counterMap.values()
        return Counters(
            socketsAdded: values[0], socketsRemoved: values[1], messagesRedirected: values[2],
            bytesRedirected: values[3], messagesPassed: values[4], insertFailures: values[5])
    }

    /// Detaches both programs now; connections continue on the normal stack.
    public func detach() {
        for link in links { link.close() }
    }
}

/// The key of an accelerated socket, mirroring `struct sock_key` in
/// `bpf/include/sock_redirect.h`: both addresses in 16-byte IPv6 form
/// (IPv4 as `::ffff:a.b.c.d`) and ports in host byte order, from the
/// socket's own point of view.
public struct SocketKey: BitwiseCopyable, Hashable, Sendable, CustomStringConvertible {
    /// The local address, network byte order.
    public var localAddress: IPv6Bytes
    /// The remote address, network byte order.
    public var remoteAddress: IPv6Bytes
    /// The local port.
    public var localPort: UInt32
    /// The remote port.
    public var remotePort: UInt32

    /// Creates a key.
    public init(localAddress: IPv6Bytes, remoteAddress: IPv6Bytes, localPort: UInt32, remotePort: UInt32) {
        self.localAddress = localAddress
        self.remoteAddress = remoteAddress
        self.localPort = localPort
        self.remotePort = remotePort
    }

    public var description: String {
        "[\(localAddress)]:\(localPort) -> [\(remoteAddress)]:\(remotePort)"
    }
}

/// Sixteen address bytes in network order, as the kernel stores an IPv6
/// address (`__u8[16]`); IPv4 addresses are IPv4-mapped.
public struct IPv6Bytes: BitwiseCopyable, Hashable, Sendable, CustomStringConvertible {
    /// The bytes, most significant first.
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    /// An IPv4 address (`a.b.c.d` as `a << 24 | ...`) in IPv4-mapped form.
    public init(ipv4 address: UInt32) {
        bytes = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF,
                 UInt8(address >> 24), UInt8((address >> 16) & 0xFF), UInt8((address >> 8) & 0xFF), UInt8(address & 0xFF))
    }

    /// The sixteen bytes of an address, most significant first.
    public init(_ array: [UInt8]) {
        precondition(array.count == 16, "an IPv6 address has 16 bytes")
        bytes = (array[0], array[1], array[2], array[3], array[4], array[5], array[6], array[7],
                 array[8], array[9], array[10], array[11], array[12], array[13], array[14], array[15])
    }

    /// The bytes as an array.
    public var array: [UInt8] { withUnsafeBytes(of: bytes) { Array($0) } }

    public static func == (lhs: IPv6Bytes, rhs: IPv6Bytes) -> Bool { lhs.array == rhs.array }
    public func hash(into hasher: inout Hasher) { hasher.combine(array) }

    public var description: String {
        let all = array
        if all[0..<10].allSatisfy({ $0 == 0 }) && all[10] == 0xFF && all[11] == 0xFF {
            return "::ffff:" + all[12...].map(String.init).joined(separator: ".")
        }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(all[$0]) << 8 | UInt16(all[$0 + 1]), radix: 16) }.joined(separator: ":")
    }
}
