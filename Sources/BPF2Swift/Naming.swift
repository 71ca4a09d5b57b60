/// Swift names for C names.
enum Naming {
    /// `flow_key` → `FlowKey`.
    static func upperCamel(_ name: String) -> String {
        let words = name.split(separator: "_").filter { !$0.isEmpty }
        let joined = words.map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
        return escapeLeadingDigit(joined.isEmpty ? "Anonymous" : joined)
    }

    /// `local_ip` → `localIp`; `SOCKETS_ADDED` → `socketsAdded`.
    static func lowerCamel(_ name: String) -> String {
        let allCaps = name == name.uppercased()
        let words = name.split(separator: "_").filter { !$0.isEmpty }.map { allCaps ? $0.lowercased() : String($0) }
        guard let first = words.first else { return "_" }
        let head = first.prefix(1).lowercased() + first.dropFirst()
        return escapeLeadingDigit(head + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined())
    }

    /// A Swift identifier for a member name, back-quoted when it is a keyword.
    static func identifier(_ name: String) -> String {
        let swift = lowerCamel(name)
        return keywords.contains(swift) ? "`\(swift)`" : swift
    }

    private static func escapeLeadingDigit(_ name: String) -> String {
        name.first?.isNumber == true ? "_" + name : name
    }

    /// The longest common `PREFIX_` of enum constants, so `ACCEL_SOCKETS_ADDED` becomes `socketsAdded`.
    static func commonPrefix(_ names: [String]) -> String {
        guard var prefix = names.first, names.count > 1 else { return "" }
        for name in names.dropFirst() {
            while !name.hasPrefix(prefix) { prefix.removeLast() }
        }
        guard let underscore = prefix.lastIndex(of: "_") else { return "" }
        let candidate = String(prefix[...underscore])
        // Keep names that would start with a digit whole.
        return names.allSatisfy { $0.dropFirst(candidate.count).first?.isLetter == true } ? candidate : ""
    }

    static let keywords: Set<String> = [
        "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init", "inout",
        "internal", "let", "open", "operator", "private", "protocol", "public", "rethrows", "static", "struct",
        "subscript", "typealias", "var", "break", "case", "continue", "default", "defer", "do", "else", "fallthrough",
        "for", "guard", "if", "in", "repeat", "return", "switch", "where", "while", "as", "catch", "false", "is", "nil",
        "super", "self", "Self", "throw", "throws", "true", "try", "any", "some", "Type", "Protocol",
    ]
}
