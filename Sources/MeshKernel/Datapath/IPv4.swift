/// An IPv4 address.
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// The address in host byte order (`10.0.0.1` is `0x0A00_0001`).
    public var value: UInt32

    /// Wraps an address in host byte order.
    public init(_ value: UInt32) { self.value = value }

    /// Parses dotted-quad text such as `10.96.0.10`.
    public init(_ text: String) throws(BPFError) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { throw IPv4Address.invalid(text) }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }), let byte = UInt8(part) else {
                throw IPv4Address.invalid(text)
            }
            value = value << 8 | UInt32(byte)
        }
        self.value = value
    }

    /// The address in network byte order, as the kernel stores it.
    public var networkOrder: UInt32 { value.bigEndian }

    /// Wraps an address in network byte order.
    public init(networkOrder: UInt32) { value = UInt32(bigEndian: networkOrder) }

    /// `127.0.0.1`.
    public static let loopback = IPv4Address(0x7F00_0001)

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }

    private static func invalid(_ text: String) -> BPFError {
        BPFError(.invalidArgument, operation: "parse IPv4 address", subject: "'\(text)'", detail: "expected four decimal bytes such as 10.96.0.10")
    }
}

/// An IPv4 address and a TCP or UDP port.
public struct IPv4Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The address.
    public var address: IPv4Address
    /// The port, host byte order.
    public var port: UInt16

    /// Creates an endpoint.
    public init(_ address: IPv4Address, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String { "\(address):\(port)" }
}

/// An IPv4 network in CIDR notation, such as `10.96.0.0/12`.
public struct IPv4CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits zero).
    public var network: IPv4Address
    /// The number of leading bits that count (0...32).
    public var prefixLength: UInt32

    /// Parses `a.b.c.d/n`; a bare address is a /32. Host bits must be zero.
    public init(_ text: String) throws(BPFError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw IPv4CIDR.invalid(text, "expected address/prefix-length") }
        let address = try IPv4Address(String(parts[0]))
        var length: UInt32 = 32
        if parts.count == 2 {
            guard parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let parsed = UInt32(parts[1]), parsed <= 32 else {
                throw IPv4CIDR.invalid(text, "the prefix length must be 0 to 32")
            }
            length = parsed
        }
        let mask: UInt32 = length == 0 ? 0 : ~0 << (32 - length)
        guard address.value & ~mask == 0 else {
            throw IPv4CIDR.invalid(text, "host bits are set; did you mean \(IPv4Address(address.value & mask))/\(length)?")
        }
        network = address
        prefixLength = length
    }

    /// Whether `address` is in this network.
    public func contains(_ address: IPv4Address) -> Bool {
        let mask: UInt32 = prefixLength == 0 ? 0 : ~0 << (32 - prefixLength)
        return address.value & mask == network.value
    }

    public var description: String { "\(network)/\(prefixLength)" }

    private static func invalid(_ text: String, _ reason: String) -> BPFError {
        BPFError(.invalidArgument, operation: "parse CIDR", subject: "'\(text)'", detail: reason)
    }
}
