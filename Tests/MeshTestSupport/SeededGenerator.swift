/// A deterministic random number generator (xorshift64*), so a fuzz test
/// draws the same inputs on every run and a failing one can be reproduced.
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    /// A generator starting from `seed`.
    public init(seed: UInt64) { state = seed == 0 ? 1 : seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

extension Array where Element == UInt8 {
    /// These bytes with `edits` random single-byte edits (a byte replaced,
    /// removed or inserted), never left empty: a fuzz test's mutation.
    public func mutated(edits: ClosedRange<Int>, using generator: inout SeededGenerator) -> [UInt8] {
        var bytes = self
        for _ in 0..<Int.random(in: edits, using: &generator) {
            let index = Int.random(in: 0..<bytes.count, using: &generator)
            switch Int.random(in: 0..<3, using: &generator) {
            case 0: bytes[index] = UInt8.random(in: 0...255, using: &generator)
            case 1: bytes.remove(at: index)
            default: bytes.insert(UInt8.random(in: 0...255, using: &generator), at: index)
            }
            if bytes.isEmpty { bytes = [0x30] }
        }
        return bytes
    }
}
