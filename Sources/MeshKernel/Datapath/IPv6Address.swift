import Glibc

/// An IPv6 address.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    /// The first 64 bits, as a number (`2001:db8::` has `0x2001_0db8_0000_0000`).
    public var high: UInt64
    /// The last 64 bits, as a number.
    public var low: UInt64

    /// Creates an address from its two 64-bit halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses any textual form `inet_pton` accepts, such as `fd00::1` or `::ffff:10.0.0.1`.
    public init(_ text: String) throws(BPFError) {
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else {
            throw BPFError(.invalidArgument, operation: "parse IPv6 address", subject: "'\(text)'",
                           detail: "expected an IPv6 address such as fd00::1")
        }
        self.init(networkOrderWords: withUnsafeBytes(of: address) { $0.loadUnaligned(as: (UInt32, UInt32, UInt32, UInt32).self) })
    }

    /// Creates an address from four 32-bit words in network byte order, as the kernel stores it.
    public init(networkOrderWords words: (UInt32, UInt32, UInt32, UInt32)) {
        high = UInt64(UInt32(bigEndian: words.0)) << 32 | UInt64(UInt32(bigEndian: words.1))
        low = UInt64(UInt32(bigEndian: words.2)) << 32 | UInt64(UInt32(bigEndian: words.3))
    }

    /// The four 32-bit words in network byte order.
    public var networkOrderWords: (UInt32, UInt32, UInt32, UInt32) {
        (UInt32(truncatingIfNeeded: high >> 32).bigEndian, UInt32(truncatingIfNeeded: high).bigEndian,
         UInt32(truncatingIfNeeded: low >> 32).bigEndian, UInt32(truncatingIfNeeded: low).bigEndian)
    }

    /// `::1`.
    public static let loopback = IPv6Address(high: 0, low: 1)

    /// The IPv4 address this one maps (`::ffff:a.b.c.d`), or nil.
    public var mappedIPv4: IPv4Address? {
        high == 0 && low >> 32 == 0xFFFF ? IPv4Address(UInt32(truncatingIfNeeded: low)) : nil
    }

    /// The IPv4-mapped form of `address`, `::ffff:a.b.c.d`.
    public init(mapping address: IPv4Address) {
        self.init(high: 0, low: 0xFFFF << 32 | UInt64(address.value))
    }

    public var description: String {
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) { $0.storeBytes(of: networkOrderWords, as: (UInt32, UInt32, UInt32, UInt32).self) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
