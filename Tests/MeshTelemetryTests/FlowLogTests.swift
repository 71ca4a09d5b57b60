import MeshKernel
import MeshTelemetry
import Synchronization
import Testing

@Suite("The flow log's L3/L4 lines")
struct FlowLogTests {
    /// The lines `FlowLog` writes for `events`.
    private func lines(_ events: [IdentityPolicyObject.FlowEvent]) -> [String] {
        let written = Mutex<[String]>([])
        let log = FlowLog(workloadName: { $0 == 300 ? "db" : nil }) { line in written.withLock { $0.append(line) } }
        for event in events { log.record(event) }
        return written.withLock { $0 }
    }

    @Test("an IPv4 peer is written with its address; a native IPv6 peer, whose address the policy does not keep, with its family only")
    func peerAddressOrFamily() {
        let ingress = IdentityPolicyObject.FlowDirection.ingress.rawValue
        let written = lines([
            .init(timestampNs: 1, sourceIdentity: 2, destinationIdentity: 300, peerAddress: UInt32(0x0A00_0405).bigEndian, destinationPort: 5432,
                  protocol: 6, verdict: UInt8(IdentityPolicyObject.Verdict.allow.rawValue), ruleId: 7, direction: ingress),
            .init(timestampNs: 2, sourceIdentity: 2, destinationIdentity: 300, destinationPort: 5432, protocol: 6,
                  verdict: UInt8(IdentityPolicyObject.Verdict.deny.rawValue), ruleId: 0xFFFF, direction: ingress, peerIsIpv6: 1),
            .init(timestampNs: 3, sourceIdentity: 300, destinationIdentity: 2, peerAddress: UInt32(0x0A00_0405).bigEndian, destinationPort: 80,
                  protocol: 6, verdict: UInt8(IdentityPolicyObject.Verdict.redirect.rawValue), ruleId: 8,
                  direction: IdentityPolicyObject.FlowDirection.egress.rawValue),
        ])
        #expect(written.count == 3)
        #expect(written[0].contains(#""peer":"10.0.4.5""#) && !written[0].contains("peer_family"), "\(written[0])")
        #expect(written[0].contains(#""destination_workload":"db""#) && written[0].contains(#""rule":7"#) && written[0].contains(#""verdict":"allowed""#))
        #expect(written[1].contains(#""peer_family":"ipv6""#) && !written[1].contains(#""peer":"#), "\(written[1])")
        #expect(written[1].contains(#""verdict":"denied""#) && !written[1].contains(#""rule""#))
        #expect(written[2].contains(#""verdict":"redirected""#) && written[2].contains(#""direction":"egress""#), "\(written[2])")
    }
}
