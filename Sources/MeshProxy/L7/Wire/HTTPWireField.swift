import MeshTelemetry

/// One header field of a head: where its name and its value (without the
/// whitespace around it) lie in the head's bytes, and which of the names the
/// proxy reads itself it is. Nothing is copied out of the head until asked
/// for (``HTTPWireHead/name(of:)``, ``HTTPWireHead/value(of:)``).
struct HTTPWireField {
    /// The name's offsets in the head's readable bytes.
    let name: Range<Int32>
    /// The value's offsets in the head's readable bytes.
    let value: Range<Int32>
    /// The name, if it is one of those the proxy reads or drops; nil for any other.
    let known: Name?

    /// The header names the proxy reads or drops itself, recognized once as
    /// the head is parsed, so that finding one compares a number, not bytes.
    enum Name: UInt8, CaseIterable {
        case host
        case contentLength
        case transferEncoding
        case connection
        case keepAlive
        case proxyConnection
        case te
        case upgrade
        case expect

        /// The name as a header spells it, in lowercase.
        var spelling: StaticString {
            switch self {
            case .host: "host"
            case .contentLength: "content-length"
            case .transferEncoding: "transfer-encoding"
            case .connection: "connection"
            case .keepAlive: "keep-alive"
            case .proxyConnection: "proxy-connection"
            case .te: "te"
            case .upgrade: "upgrade"
            case .expect: "expect"
            }
        }

        /// The known name that `bytes` spell in any case; nil for another name.
        static func recognizing(_ bytes: some Collection<UInt8>) -> Name? {
            // By length first: most names are ruled out without reading a byte.
            func spelled(_ name: Name) -> Name? { spells(bytes, name.spelling) ? name : nil }
            return switch bytes.count {
            case 2: spelled(.te)
            case 4: spelled(.host)
            case 6: spelled(.expect)
            case 7: spelled(.upgrade)
            case 10: spelled(.connection) ?? spelled(.keepAlive)
            case 14: spelled(.contentLength)
            case 16: spelled(.proxyConnection)
            case 17: spelled(.transferEncoding)
            default: nil
            }
        }

        /// Whether `bytes` spell `known` (lowercase letters and hyphens) in
        /// any case. Setting bit 5 of a byte folds an uppercase letter onto its
        /// lowercase one and leaves a lowercase letter or a hyphen as it is; no
        /// other byte a header name or value can hold (no control character)
        /// folds onto either — so one branchless pass compares them.
        private static func spells(_ bytes: some Collection<UInt8>, _ known: StaticString) -> Bool {
            known.withUTF8Buffer { known in
                guard bytes.count == known.count else { return false }
                var difference: UInt8 = 0
                var index = 0
                for byte in bytes {
                    difference |= (byte | 0x20) ^ known[index]
                    index += 1
                }
                return difference == 0
            }
        }

        /// The known name spelled by `lowercased` (a name in lowercase); nil for another name.
        init?(lowercased: String) {
            guard let name = Self.recognizing(lowercased.utf8) else { return nil }
            self = name
        }
    }

    /// A set of known names, a bit each: whether a name is in it, and whether
    /// it was inserted more than once.
    struct KnownNames {
        private var present: UInt16 = 0
        private var repeated: UInt16 = 0

        /// The set of `names`.
        init(_ names: Name...) {
            for name in names { insert(name) }
        }

        /// Adds `name` (again, if it is in already).
        mutating func insert(_ name: Name) {
            let bit: UInt16 = 1 << name.rawValue
            repeated |= present & bit
            present |= bit
        }

        /// Whether `name` is in the set.
        func contains(_ name: Name) -> Bool { present & (1 << name.rawValue) != 0 }

        /// Whether `name` was inserted more than once.
        func isRepeated(_ name: Name) -> Bool { repeated & (1 << name.rawValue) != 0 }

        /// Whether a name is in both sets.
        func overlaps(_ other: KnownNames) -> Bool { present & other.present != 0 }

        /// The names in either set (none of them repeated).
        func union(_ other: KnownNames) -> KnownNames {
            var union = KnownNames()
            union.present = present | other.present
            return union
        }
    }

    /// A set of header names: some known ones and any others (in lowercase),
    /// such as the fields that concern one connection only.
    struct Names {
        /// The known names of the set.
        private(set) var known = KnownNames()
        private var others: [String] = []

        /// The set of the known names `known`.
        init(_ known: Name...) {
            for name in known { insert(name) }
        }

        /// Adds a known name.
        mutating func insert(_ name: Name) { known.insert(name) }

        /// Whether the known name `name` is in the set.
        func contains(_ name: Name) -> Bool { known.contains(name) }

        /// Adds a name that is none of the known ones, given in lowercase.
        mutating func insert(other name: String) {
            if !others.contains(name) { others.append(name) }
        }

        /// Whether `field` of `head` has one of the names.
        func contains(_ field: HTTPWireField, of head: HTTPWireHead) -> Bool {
            if let name = field.known { return contains(name) }
            return others.contains { head.field(field, isNamed: $0) }
        }
    }
}
