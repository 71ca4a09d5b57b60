/// The sockmap shortcut: TCP connections between local sockets of a cgroup
/// exchange data socket-to-socket, without traversing the TCP/IP stack.
///
/// `sockops` puts each established IPv4/IPv6 TCP socket of the cgroup into a
/// sockhash keyed by its 4-tuple (``SockRedirectObject/SockKey``, generated
/// from `bpf/include/sock_redirect.h`); an `sk_msg` program on that sockhash
/// redirects every `sendmsg` to the peer socket when the peer is in the map
/// too. Sockets leave the map when they close. Peers outside the mesh are
/// untouched. When the sockhash is full, new sockets use the normal stack
/// (fail open) and are counted in ``Counters/insertFailures``.
///
/// Known kernel behaviour (measured on Linux 6.18): on a redirected socket, a
/// *blocking* `recv()` that races a concurrent `send()` and the peer's
/// half-close can return `EAGAIN` without data; retrying returns the data,
/// and no byte is lost (see the concurrent half-close test). Applications
/// that treat `EAGAIN` on a blocking socket as fatal should not be accelerated.
///
/// ```swift
/// let acceleration = try SocketAcceleration(cgroup: workload)
/// // ... traffic ...
/// print(try acceleration.counters())
/// acceleration.detach()          // or release it
/// ```
public final class SocketAcceleration: Sendable {
    /// The loaded `sock_redirect` object and its typed maps.
    public let datapath: SockRedirectObject.Loaded
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
    /// - Parameters:
    ///   - cgroup: the workloads whose TCP sockets are accelerated.
    ///   - capacity: the most sockets accelerated at once.
    public init(cgroup: Cgroup, capacity: Int = 65_536) throws(BPFError) {
        let skeleton = try SockRedirectObject.open()
        try skeleton.maps.sockHash.setMaxEntries(capacity)
        datapath = try skeleton.load()
        let verdict = try datapath.programs.redirectToPeer.attach(toSockMap: datapath.maps.sockHash.map)
        let sockOps = try datapath.programs.accelerateSockets.attach(to: cgroup)
        links = [sockOps, verdict]
    }

    /// The sockhash of accelerated sockets.
    public var sockets: SockHash<SockRedirectObject.SockKey> { datapath.maps.sockHash }

    /// Reads the datapath's counters.
    public func counters() throws(BPFError) -> Counters {
        let values = try datapath.maps.accelCounters.values()
        func value(_ slot: SockRedirectObject.AccelCounter) -> UInt64 { values[Int(slot.rawValue)] }
        return Counters(
            socketsAdded: value(.socketsAdded), socketsRemoved: value(.socketsRemoved),
            messagesRedirected: value(.msgsRedirected), bytesRedirected: value(.bytesRedirected),
            messagesPassed: value(.msgsPassed), insertFailures: value(.insertFailed))
    }

    /// Detaches both programs now; connections continue on the normal stack.
    public func detach() {
        for link in links { link.close() }
    }
}
