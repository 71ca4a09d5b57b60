import Synchronization

/// A count that callbacks on any thread add to and a test reads.
public final class Tally: Sendable {
    private let count = Atomic<Int>(0)

    /// A count of 0.
    public init() {}

    /// Adds one.
    public func add() { count.add(1, ordering: .relaxed) }

    /// The count now.
    public var value: Int { count.load(ordering: .relaxed) }
}
