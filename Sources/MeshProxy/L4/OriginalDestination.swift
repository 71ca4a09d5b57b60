import Glibc
import MeshKernel
import NIOCore

/// Where the proxy learns a redirected connection's original destination.
public enum OriginalDestinationSource: Sendable {
    /// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (or `SOL_IPV6`,
    /// `IP6T_SO_ORIGINAL_DST`) on the accepted socket, which the datapath's
    /// ``ProxyRedirect`` answers — as it would netfilter's REDIRECT.
    case socketOption
    /// ``ProxyRedirect/connection(client:proxy:)``: the datapath's table,
    /// looked up by the accepted connection's addresses. It also tells the
    /// connecting workload's identity, for HTTP authorization
    /// (``SourceIdentity/workload(_:)``).
    case datapath(ProxyRedirect)
    /// The datapath's table as ``datapath(_:)`` reads it, opened from its pin
    /// (``MeshKernel/RedirectRecords/init(pinnedAt:)``): for a proxy in
    /// another process than the datapath's agent.
    case pinnedRecords(RedirectRecords)

    /// The datapath's records, nil for ``socketOption``.
    private var datapathRecords: RedirectRecords? {
        switch self {
        case .socketOption: nil
        case .datapath(let redirect): redirect.records
        case .pinnedRecords(let records): records
        }
    }

    /// The datapath's record of an accepted connection — with the identity of
    /// the workload that made it — or nil when it was not redirected, its
    /// record is gone, or the source is ``socketOption`` (which tells only the
    /// destination). Throws when the datapath's table cannot be read.
    func record(of channel: any Channel) throws(BPFError) -> RedirectedConnection? {
        guard let records = datapathRecords, let client = channel.remoteAddress.flatMap(Endpoint.init),
              let proxy = channel.localAddress.flatMap(Endpoint.init) else { return nil }
        return try records.connection(client: client, proxy: proxy)
    }

    /// The original destination of an accepted connection whose datapath
    /// record (``record(of:)``, nil from ``socketOption``) is `record`, or nil
    /// when it was not redirected (or its record is gone): the record's
    /// destination, as read, or `getsockopt`'s answer for ``socketOption``.
    /// Fails when `getsockopt` fails unexpectedly.
    func resolve(_ channel: any Channel, record: RedirectedConnection?) -> EventLoopFuture<Endpoint?> {
        switch self {
        case .datapath, .pinnedRecords:
            return channel.eventLoop.makeSucceededFuture(record?.originalDestination)
        case .socketOption:
            guard let options = channel as? any SocketOptionProvider, let local = channel.localAddress.flatMap(Endpoint.init) else {
                return channel.eventLoop.makeSucceededFuture(nil)
            }
            // ENOENT: the datapath has no record, the connection was not redirected.
            let notRedirected: @Sendable (any Error) throws -> Endpoint? = { error in
                guard let io = error as? IOError, io.errnoCode == ENOENT else { throw error }
                return nil
            }
            if !local.address.isIPv4 {
                let answer: EventLoopFuture<sockaddr_in6> = options.unsafeGetSocketOption(level: .init(IPPROTO_IPV6), name: .init(80))
                return answer.map { Endpoint(v6: $0) }.flatMapErrorThrowing(notRedirected)
            }
            let answer: EventLoopFuture<sockaddr_in> = options.unsafeGetSocketOption(level: .init(SOL_IP), name: .init(80))
            return answer.map { Endpoint(v4: $0) }.flatMapErrorThrowing(notRedirected)
        }
    }
}

extension Endpoint {
    /// The endpoint of a NIO socket address (nil for Unix sockets).
    init?(_ address: SocketAddress) {
        switch address {
        case .v4(let v4): self.init(v4: v4.address)
        case .v6(let v6): self.init(v6: v6.address)
        case .unixDomainSocket: return nil
        }
    }

    init(v4 address: sockaddr_in) {
        self.init(.v4(IPv4Address(networkOrder: address.sin_addr.s_addr)), port: UInt16(bigEndian: address.sin_port))
    }

    init(v6 address: sockaddr_in6) {
        let words = withUnsafeBytes(of: address.sin6_addr) { $0.loadUnaligned(as: (UInt32, UInt32, UInt32, UInt32).self) }
        self.init(IPAddress(networkOrderWords: words), port: UInt16(bigEndian: address.sin6_port))
    }

    /// The NIO socket address of this endpoint, built from its bytes.
    var socketAddress: SocketAddress {
        switch address {
        case .v4(let v4):
            var raw = sockaddr_in()
            raw.sin_family = sa_family_t(AF_INET)
            raw.sin_port = port.bigEndian
            raw.sin_addr.s_addr = v4.networkOrder
            return SocketAddress(raw, host: "")
        case .v6(let v6):
            var raw = sockaddr_in6()
            raw.sin6_family = sa_family_t(AF_INET6)
            raw.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &raw.sin6_addr) { $0.storeBytes(of: v6.networkOrderWords, as: (UInt32, UInt32, UInt32, UInt32).self) }
            return SocketAddress(raw, host: "")
        }
    }
}
