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
/// (``TenantStatistics/forbiddenRequests``); its connection stays open. Paths
/// are matched as sent, so a path the upstream could read differently —
/// dot segments, encoded `.`, `/` or `\` — is refused with 400 when
/// authorization is on.
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

    /// The decision for a request, with the reason for a refusal.
    func decide(sources: Set<SourceIdentity>, method: String, path: String, header: (String) -> String?) -> (Action, reason: String) {
        for (index, rule) in rules.enumerated() where rule.matches(sources: sources, method: method, path: path, header: header) {
            return (rule.action, "rule \(index) \(rule.action == .allow ? "allows" : "denies") it")
        }
        return (defaultAction, "no rule allows it (default \(defaultAction == .allow ? "allow" : "deny"))")
    }

    /// True for a path that an upstream might resolve to another one than it
    /// reads as: dot segments, or encoded dots, slashes and backslashes.
    static func isAmbiguous(_ path: String) -> Bool {
        let path = path.prefix { $0 != "?" && $0 != "#" }.lowercased()
        if path.contains("%2e") || path.contains("%2f") || path.contains("%5c") || path.contains("\\") { return true }
        return path.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == "." || $0 == ".." }
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
    /// Headers that must carry exactly these values (names in any case).
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
            && path.hasPrefix(pathPrefix)
            && headers.allSatisfy { header($0.key) == $0.value }
    }
}
