/// An IPv4 or an IPv6 address.
///
/// The datapath keeps every address in 16 bytes, IPv4 as the IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`) that dual-stack sockets use, so one table
/// serves both families and an IPv6 socket reaching an IPv4 service through
/// its mapped address finds the same entry.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 address.
    case v4(IPv4Address)
    /// An IPv6 address. A mapped IPv4 address is normalized to ``v4(_:)``.
    case v6(IPv6Address)

    /// Parses an IPv4 (`10.96.0.10`) or IPv6 (`fd00::10`) address.
    public init(_ text: String) throws(BPFError) {
        guard text.contains(":") else {
            self = .v4(try IPv4Address(text))
            return
        }
        do {
            self.init(try IPv6Address(text))
        } catch {
            throw BPFError(.invalidArgument, operation: "parse IP address", subject: "'\(text)'",
                           detail: "expected an IPv4 address such as 10.96.0.10 or an IPv6 address such as fd00::1 (without a port)")
        }
    }

    /// Wraps an IPv6 address; an IPv4-mapped one becomes ``v4(_:)``.
    public init(_ address: IPv6Address) {
        self = address.mappedIPv4.map(IPAddress.v4) ?? .v6(address)
    }

    /// `127.0.0.1`.
    public static let loopback = IPAddress.v4(.loopback)
    /// `::1`.
    public static let ipv6Loopback = IPAddress.v6(.loopback)

    /// Whether this is an IPv4 address.
    public var isIPv4: Bool { if case .v4 = self { true } else { false } }

    /// The number of bits in an address of this family (32 or 128).
    public var bitWidth: UInt32 { isIPv4 ? 32 : 128 }

    /// The address as the datapath stores it: 16 bytes, IPv4 mapped.
    public var mapped: IPv6Address {
        switch self {
        case .v4(let address): IPv6Address(mapping: address)
        case .v6(let address): address
        }
    }

    /// The datapath's form as four 32-bit words in network byte order.
    public var networkOrderWords: (UInt32, UInt32, UInt32, UInt32) { mapped.networkOrderWords }

    /// Reads the datapath's form back.
    public init(networkOrderWords words: (UInt32, UInt32, UInt32, UInt32)) {
        self.init(IPv6Address(networkOrderWords: words))
    }

    public var description: String {
        switch self {
        case .v4(let address): address.description
        case .v6(let address): address.description
        }
    }
}

/// An IPv4 or IPv6 address and a TCP or UDP port.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The address.
    public var address: IPAddress
    /// The port, host byte order.
    public var port: UInt16

    /// Creates an endpoint.
    public init(_ address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `a.b.c.d:port` or `[v6]:port`.
    public var description: String { address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)" }
}

/// A network in CIDR notation, IPv4 (`10.96.0.0/12`) or IPv6 (`fd00::/64`).
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits zero).
    public var network: IPAddress
    /// The number of leading bits that count (0 to 32 for IPv4, 0 to 128 for IPv6).
    public var prefixLength: UInt32

    /// Parses `address/length`; a bare address is a single host. Host bits must be zero.
    public init(_ text: String) throws(BPFError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw CIDR.invalid(text, "expected address/prefix-length") }
        let address = try IPAddress(String(parts[0]))
        // An IPv4-mapped address written in IPv6 (::ffff:10.0.0.0/104) counts its
        // prefix over 128 bits; it becomes the IPv4 network it maps.
        let writtenWidth: UInt32 = parts[0].contains(":") ? 128 : 32
        let offset = writtenWidth - address.bitWidth
        var length = address.bitWidth
        if parts.count == 2 {
            guard parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let parsed = UInt32(parts[1]), parsed <= writtenWidth, parsed >= offset else {
                throw CIDR.invalid(text, offset > 0 ? "an IPv4-mapped network's prefix length must be 96 to 128"
                                                    : "the prefix length must be 0 to \(writtenWidth)")
            }
            length = parsed - offset
        }
        let masked = CIDR.masking(address, to: length)
        guard masked == address else {
            throw CIDR.invalid(text, "host bits are set; did you mean \(masked)/\(length)?")
        }
        network = address
        prefixLength = length
    }

    /// The network of one host: `address/32` or `address/128`.
    public init(host address: IPAddress) {
        network = address
        prefixLength = address.bitWidth
    }

    /// Whether `address` is in this network (always false across families).
    public func contains(_ address: IPAddress) -> Bool {
        address.isIPv4 == network.isIPv4 && CIDR.masking(address, to: prefixLength) == network
    }

    /// The prefix length counted over the datapath's 16-byte form (IPv4 behind the 96-bit mapped prefix).
    public var mappedPrefixLength: UInt32 { network.isIPv4 ? 96 + prefixLength : prefixLength }

    public var description: String { "\(network)/\(prefixLength)" }

    private static func masking(_ address: IPAddress, to length: UInt32) -> IPAddress {
        switch address {
        case .v4(let v4):
            return .v4(IPv4Address(length == 0 ? 0 : v4.value & ~0 << (32 - length)))
        case .v6(let v6):
            let highMask: UInt64 = length == 0 ? 0 : length >= 64 ? ~0 : ~0 << (64 - length)
            let lowMask: UInt64 = length <= 64 ? 0 : length == 128 ? ~0 : ~0 << (128 - length)
            return .v6(IPv6Address(high: v6.high & highMask, low: v6.low & lowMask))
        }
    }

    private static func invalid(_ text: String, _ reason: String) -> BPFError {
        BPFError(.invalidArgument, operation: "parse CIDR", subject: "'\(text)'", detail: reason)
    }
}
