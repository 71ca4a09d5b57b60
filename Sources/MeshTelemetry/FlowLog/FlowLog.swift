import MeshKernel

/// A flow log: one JSON object per line for each observed HTTP exchange
/// (`"type":"l7"`) and each L3/L4 flow decision of the datapath's identity
/// policy (`"type":"l4"`), handed to `write` (a file, a pipe, a log shipper).
///
/// Times are kernel timestamps (`CLOCK_MONOTONIC` nanoseconds) so records
/// from both sources order correctly; identities are numbers, names where
/// `workloadName` knows them.
public struct FlowLog: Sendable {
    private let write: @Sendable (String) -> Void
    private let workloadName: @Sendable (UInt32) -> String?

    /// A log that hands each line (without its newline) to `write`.
    public init(workloadName: @escaping @Sendable (UInt32) -> String? = { _ in nil }, write: @escaping @Sendable (String) -> Void) {
        self.write = write
        self.workloadName = workloadName
    }

    /// Logs one HTTP exchange.
    public func record(_ exchange: HTTPExchange) {
        var line = JSONLine()
        line.field("type", "l7")
        line.field("time_ns", exchange.requestStart)
        line.field("reporter", exchange.reporter.rawValue)
        if let tenant = exchange.tenant { line.field("tenant", tenant) }
        line.field("identity", UInt64(exchange.identity))
        if let name = workloadName(exchange.identity) { line.field("workload", name) }
        line.field("pid", UInt64(exchange.pid))
        line.field("local", exchange.local.description)
        line.field("remote", exchange.remote.description)
        if let upstream = exchange.upstream { line.field("upstream", upstream.description) }
        line.field("method", exchange.request.method)
        line.field("target", exchange.request.target)
        if let host = exchange.request.host { line.field("host", host) }
        if let traceparent = exchange.request.traceparent { line.field("traceparent", traceparent) }
        line.field("status", UInt64(exchange.status))
        line.field("duration_ns", exchange.responseEnd &- exchange.requestStart)
        line.field("time_to_response_ns", exchange.responseStart &- exchange.requestStart)
        line.field("request_bytes", UInt64(exchange.requestBytes))
        line.field("response_bytes", UInt64(exchange.responseBytes))
        write(line.finished())
    }

    /// Logs one L3/L4 flow decision of ``IdentityPolicy``.
    public func record(_ flow: IdentityPolicyObject.FlowEvent) {
        var line = JSONLine()
        line.field("type", "l4")
        line.field("time_ns", flow.timestampNs)
        line.field("direction", flow.direction == IdentityPolicyObject.FlowDirection.ingress.rawValue ? "ingress" : "egress")
        line.field("source_identity", UInt64(flow.sourceIdentity))
        if let name = workloadName(flow.sourceIdentity) { line.field("source_workload", name) }
        line.field("destination_identity", UInt64(flow.destinationIdentity))
        if let name = workloadName(flow.destinationIdentity) { line.field("destination_workload", name) }
        // A native IPv6 peer's address is not kept by the policy (its rules are IPv4): its family only.
        if flow.peerIsIpv6 != 0 { line.field("peer_family", "ipv6") } else { line.field("peer", IPv4Address(networkOrder: flow.peerAddress).description) }
        line.field("port", UInt64(flow.destinationPort))
        line.field("protocol", flow.protocol == 6 ? "tcp" : flow.protocol == 17 ? "udp" : String(flow.protocol))
        line.field("verdict", Self.verdictName(flow.verdict))
        if flow.ruleId != 0xFFFF { line.field("rule", UInt64(flow.ruleId)) }
        if flow.pid != 0 { line.field("pid", UInt64(flow.pid)) }
        write(line.finished())
    }

    /// The word for a policy verdict in a flow line; a value it does not know, as its number.
    private static func verdictName(_ verdict: UInt8) -> String {
        switch IdentityPolicyObject.Verdict(rawValue: UInt32(verdict)) {
        case .allow: "allowed"
        case .deny: "denied"
        case .redirect: "redirected"
        default: String(verdict)
        }
    }
}

/// Builds one JSON object, field by field, escaping strings as RFC 8259 requires.
struct JSONLine {
    private var text = "{"
    private var empty = true

    mutating func field(_ name: String, _ value: String) {
        key(name)
        text += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                text += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: text.unicodeScalars.append(scalar)
            }
        }
        text += "\""
    }

    mutating func field(_ name: String, _ value: UInt64) {
        key(name)
        text += String(value)
    }

    private mutating func key(_ name: String) {
        if !empty { text += "," }
        empty = false
        text += "\"\(name)\":"
    }

    func finished() -> String { text + "}" }
}
