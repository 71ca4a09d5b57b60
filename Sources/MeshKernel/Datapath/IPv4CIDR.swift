/// An IPv4 network in CIDR notation, such as `10.96.0.0/12`.
public struct IPv4CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits zero).
    public var network: IPv4Address
    /// The number of leading bits that count (0...32).
    public var prefixLength: UInt32

    /// Parses `a.b.c.d/n`; a bare address is a /32. Host bits must be zero.
    public init(_ text: String) throws(BPFError) {
        let parsed = try CIDR(text)
        guard case .v4(let network) = parsed.network else {
            throw BPFError(.invalidArgument, operation: "parse CIDR", subject: "'\(text)'", detail: "expected an IPv4 network such as 10.96.0.0/12")
        }
        self.network = network
        prefixLength = parsed.prefixLength
    }

    /// Whether `address` is in this network.
    public func contains(_ address: IPv4Address) -> Bool {
        let mask: UInt32 = prefixLength == 0 ? 0 : ~0 << (32 - prefixLength)
        return address.value & mask == network.value
    }

    public var description: String { "\(network)/\(prefixLength)" }
}
