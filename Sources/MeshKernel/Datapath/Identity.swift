import Synchronization

/// The security identity of a workload: a number derived from its labels.
/// ``init(labels:)`` gives the same number on every node for the same labels;
/// an ``IdentityAllocator`` moves the rare hash collision to a free number,
/// in allocation order — a cluster must share one allocator's decisions for
/// colliding label sets to agree across nodes.
///
/// Identities below 256 are reserved: ``host`` (the node itself) and
/// ``world`` (any address outside the mesh).
public struct Identity: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The number the datapath matches on.
    public let rawValue: UInt32

    /// Wraps an identity number.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The node itself.
    public static let host = Identity(rawValue: 1)
    /// Anything outside the mesh.
    public static let world = Identity(rawValue: 2)
    /// The first identity derived from labels.
    public static let firstDerived: UInt32 = 256

    /// The identity of a set of labels: a hash of the sorted `key=value`
    /// pairs, in `256..<2^24`, so every node derives the same number.
    /// ``IdentityAllocator`` resolves the rare collision.
    public init(labels: [String: String]) {
        var hash: UInt32 = 0x811C_9DC5
        for byte in Identity.canonical(labels).utf8 {
            hash ^= UInt32(byte)
            hash = hash &* 0x0100_0193
        }
        rawValue = Identity.firstDerived + hash % ((1 << 24) - Identity.firstDerived)
    }

    /// The labels in a stable, unambiguous form: sorted by key, each part
    /// length-prefixed (`3:app3:web`), so no choice of characters in keys or
    /// values can make two label sets look alike.
    static func canonical(_ labels: [String: String]) -> String {
        labels.sorted { $0.key < $1.key }.map { "\($0.key.utf8.count):\($0.key)\($0.value.utf8.count):\($0.value)" }.joined()
    }

    public var description: String {
        switch self {
        case .host: "host"
        case .world: "world"
        default: "identity \(rawValue)"
        }
    }
}

/// Hands out identities by label set: the same labels always get the same
/// identity, different labels never share one (a hash collision moves the
/// later label set to the next free number).
public final class IdentityAllocator: Sendable {
    private struct State {
        var byLabels: [String: Identity] = [:]
        var taken: [UInt32: String] = [:]
    }
    private let state = Mutex(State())

    /// Creates an empty allocator.
    public init() {}

    /// The identity for `labels`. Empty label sets are refused.
    public func identity(for labels: [String: String]) throws(BPFError) -> Identity {
        guard !labels.isEmpty else {
            throw BPFError(.invalidArgument, operation: "allocate identity", detail: "a workload needs at least one label")
        }
        let canonical = Identity.canonical(labels)
        let derived = Identity(labels: labels).rawValue
        return state.withLock { state in
            if let known = state.byLabels[canonical] { return known }
            var candidate = derived
            while state.taken[candidate] != nil {
                candidate = candidate + 1 < (1 << 24) ? candidate + 1 : Identity.firstDerived
            }
            state.taken[candidate] = canonical
            let identity = Identity(rawValue: candidate)
            state.byLabels[canonical] = identity
            return identity
        }
    }
}
