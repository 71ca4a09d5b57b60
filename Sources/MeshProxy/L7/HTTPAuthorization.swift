import MeshTelemetry

/// Who a request comes from, as the proxy knows it.
public enum SourceIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The datapath's identity of the connecting workload, from its record of
    /// the redirected connection (``OriginalDestinationSource/datapath(_:)``).
    case workload(UInt32)
    /// The SPIFFE ID of the client's certificate (mutual TLS, ``ClientAuthentication``).
    case spiffe(String)

    public var description: String {
        switch self {
        case .workload(let identity): "workload \(identity)"
        case .spiffe(let id): id
        }
    }
}

/// Authorization of a tenant's HTTP requests by source identity, method,
/// path and headers: the first matching rule decides, else the default.
///
/// With a default of ``Action/deny`` (default-deny) only what a rule allows
/// passes. A refused request is answered 403 with the reason and counted
/// (``TenantStatistics/forbiddenRequests``); its connection stays open. With
/// authorization on, the request target is matched and sent on in one
/// canonical form, and a target the upstream could read as another path is
/// refused with 400: dot segments, `;` path parameters, backslashes, encoded separators and fragments.
public struct HTTPAuthorization: Sendable, Equatable {
    /// What a rule, or the default, does with a request.
    public enum Action: Sendable, Equatable {
        case allow, deny
    }

    /// The rules, in order.
    public var rules: [HTTPAuthorizationRule]
    /// What happens to a request no rule matches.
    public var defaultAction: Action

    /// Creates the authorization.
    public init(rules: [HTTPAuthorizationRule], defaultAction: Action = .deny) {
        self.rules = rules
        self.defaultAction = defaultAction
    }

    /// The decision for a request, and the index of the rule that made it (nil: the default).
    func decide(sources: Set<SourceIdentity>, method: String, path: String, header: (String) -> String?) -> (Action, rule: Int?) {
        for (index, rule) in rules.enumerated() where rule.matches(sources: sources, method: method, path: path, header: header) {
            return (rule.action, index)
        }
        return (defaultAction, nil)
    }

    /// Why `rule` (or the default, nil) decided as it did, for a refusal's answer.
    func reason(_ rule: Int?) -> String {
        guard let rule else { return "no rule allows it (default \(defaultAction == .allow ? "allow" : "deny"))" }
        return "rule \(rule) \(rules[rule].action == .allow ? "allows" : "denies") it"
    }

    /// The request target in the one form the proxy matches and sends on, or
    /// nil for a target an upstream could read as another path: percent-encoded
    /// unreserved characters are decoded (`%61` is `a`, `%2e` is `.`), other
    /// escapes are kept in upper case, runs of `/` become one; a dot segment
    /// (after decoding), a `;` path parameter, a backslash, an encoded `/`,
    /// `\\`, `;` or `%`, a control character, a fragment, and a target that
    /// is not a path are refused. Matching is case-sensitive.
    static func canonicalTarget(_ target: String) -> String? {
        guard target.hasPrefix("/"), !target.contains("#") else { return nil }
        let split = target.firstIndex(of: "?") ?? target.endIndex
        let path = target.utf8[..<split]
        var canonical: [UInt8] = []
        canonical.reserveCapacity(path.count)
        var index = path.startIndex
        while index < path.endIndex {
            let byte = path[index]
            switch byte {
            case UInt8(ascii: "%"):
                let high = path.index(after: index), low = high < path.endIndex ? path.index(after: high) : path.endIndex
                guard low < path.endIndex, let h = HTTPSyntax.hexValue(path[high]), let l = HTTPSyntax.hexValue(path[low]) else { return nil }
                let decoded = h << 4 | l
                if isUnreserved(decoded) {
                    canonical.append(decoded)
                } else if decoded < 0x20 || decoded == 0x7F || "/\\;%".utf8.contains(decoded) {
                    return nil
                } else {
                    canonical += [UInt8(ascii: "%"), hexDigit(h), hexDigit(l)]
                }
                index = path.index(after: low)
            case UInt8(ascii: "\\"), UInt8(ascii: ";"):
                return nil
            case UInt8(ascii: "/") where canonical.last == UInt8(ascii: "/"):
                index = path.index(after: index)
            default:
                guard byte >= 0x20, byte != 0x7F else { return nil }
                canonical.append(byte)
                index = path.index(after: index)
            }
        }
        guard !hasDotSegment(canonical) else { return nil }
        return String(decoding: canonical, as: UTF8.self) + String(target[split...])
    }

    /// Whether a path has a `.` or `..` segment.
    private static func hasDotSegment(_ path: [UInt8]) -> Bool {
        var segmentStart = 0
        for index in 0...path.count where index == path.count || path[index] == UInt8(ascii: "/") {
            let segment = path[segmentStart..<index]
            if !segment.isEmpty, segment.count <= 2, segment.allSatisfy({ $0 == UInt8(ascii: ".") }) { return true }
            segmentStart = index + 1
        }
        return false
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): true
        default: false
        }
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
    }
}

/// One authorization rule: a request matches when every condition set holds.
public struct HTTPAuthorizationRule: Sendable, Equatable {
    /// What a match does.
    public var action: HTTPAuthorization.Action
    /// Sources it applies to; empty for any source, identified or not.
    public var sources: Set<SourceIdentity>
    /// Methods it applies to (upper case); empty for any.
    public var methods: Set<String>
    /// The path prefix it applies to (`/` for every path).
    public var pathPrefix: String
    /// Headers that must carry exactly these values (names in lowercase; validation refuses others).
    public var headers: [String: String]

    /// Creates a rule.
    public init(_ action: HTTPAuthorization.Action, sources: Set<SourceIdentity> = [], methods: Set<String> = [], pathPrefix: String = "/",
                headers: [String: String] = [:]) {
        self.action = action
        self.sources = sources
        self.methods = methods
        self.pathPrefix = pathPrefix
        self.headers = headers
    }

    func matches(sources requestSources: Set<SourceIdentity>, method: String, path: String, header: (String) -> String?) -> Bool {
        (sources.isEmpty || !sources.isDisjoint(with: requestSources))
            && (methods.isEmpty || methods.contains(method))
            && path.hasBytePrefix(pathPrefix)   // byte for byte, as routing compares
            && headers.allSatisfy { header($0.key) == $0.value }
    }
}
