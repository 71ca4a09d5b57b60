import MeshKernel
import MeshTestSupport
import Testing

@Suite("Addresses, endpoints and CIDRs")
struct AddressTests {
    @Test("IPv4 and IPv6 parse, print and map to the datapath's 16-byte form")
    func parseAndPrint() throws {
        #expect(try IPAddress("10.96.0.10") == .v4(IPv4Address(0x0A60_000A)))
        #expect(try IPAddress("fd00:96::1").description == "fd00:96::1")
        #expect(try IPAddress("::ffff:10.0.0.1") == (try IPAddress("10.0.0.1")), "a mapped IPv6 address is its IPv4 address")
        let mapped = IPAddress.v4(try IPv4Address("10.0.0.1")).networkOrderWords
        #expect(mapped.0 == 0 && mapped.1 == 0 && mapped.2 == UInt32(0xFFFF).bigEndian && mapped.3 == UInt32(0x0A00_0001).bigEndian)
        #expect(IPAddress(networkOrderWords: mapped) == .v4(try IPv4Address("10.0.0.1")))
        let v6 = try IPAddress("2001:db8::8:1")
        #expect(IPAddress(networkOrderWords: v6.networkOrderWords) == v6)
        #expect(Endpoint(v6, port: 443).description == "[2001:db8::8:1]:443")
        #expect(Endpoint(.loopback, port: 80).description == "127.0.0.1:80")
        for bad in ["", "10.0.0", "fd00:::1", "1.2.3.4.5", "g::1", "10.0.0.256"] {
            #expect(throws: BPFError.self, "\(bad)") { try IPAddress(bad) }
        }
    }

    @Test("CIDRs of both families: prefix bounds, host bits, membership")
    func cidrs() throws {
        let v6 = try CIDR("fd00:97::/64")
        #expect(v6.prefixLength == 64 && v6.mappedPrefixLength == 64)
        #expect(v6.contains(try IPAddress("fd00:97::5")))
        #expect(!v6.contains(try IPAddress("fd00:98::5")))
        #expect(!v6.contains(try IPAddress("10.0.0.1")), "families never match")
        let v4 = try CIDR("10.96.0.0/12")
        #expect(v4.mappedPrefixLength == 108)
        #expect(v4.contains(try IPAddress("10.100.1.1")))
        #expect(!v4.contains(try IPAddress("10.112.0.1")))
        #expect(try CIDR("fd00::1").prefixLength == 128)
        #expect(try CIDR("0.0.0.0/0").contains(try IPAddress("192.0.2.1")))
        let hostBits = try #require(throws: BPFError.self) { try CIDR("fd00::1/64") }
        #expect(hostBits.code == .invalidArgument)
        #expect(hostBits.detail?.contains("did you mean fd00::/64") == true)
        for bad in ["fd00::/129", "10.0.0.0/33", "10.0.0.0/8/1", "fd00::/x", "/8"] {
            #expect(throws: BPFError.self, "\(bad)") { try CIDR(bad) }
        }
        // IPv6 prefix boundaries.
        #expect(try CIDR("::/0").contains(try IPAddress("2001:db8::1")))
        #expect(try CIDR("fd00:1:2:3::/64").contains(try IPAddress("fd00:1:2:3:ffff::1")))
        #expect(try !CIDR("fd00:1:2:3::/64").contains(try IPAddress("fd00:1:2:4::1")))
        #expect(try CIDR("fd00:1:2:3:8000::/65").contains(try IPAddress("fd00:1:2:3:8000::1")))
        #expect(try !CIDR("fd00:1:2:3:8000::/65").contains(try IPAddress("fd00:1:2:3::1")))
        #expect(throws: BPFError.self) { try CIDR("fd00::1/127") }
        #expect(try CIDR("fd00::/127").contains(try IPAddress("fd00::1")))
        #expect(try CIDR("fd00::1/128").description == "fd00::1/128")
        // A mapped network written in IPv6 is the IPv4 network it maps, its prefix counted over 128 bits.
        #expect(try CIDR("::ffff:10.0.0.0/104") == CIDR("10.0.0.0/8"))
        #expect(throws: BPFError.self) { try CIDR("::ffff:10.0.0.0/8") }
        #expect(try #require(throws: BPFError.self) { try IPAddress("10.0.0.1:80") }.detail?.contains("without a port") == true)
        let notV4 = try #require(throws: BPFError.self) { try IPv4CIDR("fd00::/64") }
        #expect(notV4.code == .invalidArgument)
    }
}
