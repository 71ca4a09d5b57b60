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
