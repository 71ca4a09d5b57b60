/// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted: each
/// backend claims table entries in proportion to its weight, and a change to
/// the backend set moves only about its share of entries.
enum MaglevTable {
    /// The table size: a prime, so every skip visits every entry.
    static let size = 1_021

    /// The backend index of each table entry.
    static func build(_ backends: [(name: String, weight: UInt32)], size: Int = MaglevTable.size) -> [Int] {
        guard !backends.isEmpty else { return [] }
        let permutations = backends.map { backend -> (offset: Int, skip: Int) in
            let offset = Int(fnv1a(backend.name, seed: 0xCBF2_9CE4_8422_2325) % UInt64(size))
            let skip = Int(fnv1a(backend.name, seed: 0x8422_2325_CBF2_9CE4) % UInt64(size - 1)) + 1
            return (offset, skip)
        }
        var table = [Int](repeating: -1, count: size)
        var next = [Int](repeating: 0, count: backends.count)
        var filled = 0
        let maxWeight = backends.map(\.weight).max() ?? 1
        var credit = [UInt64](repeating: 0, count: backends.count)
        while filled < size {
            for (index, backend) in backends.enumerated() where filled < size {
                // Weighted turns: a backend of weight w takes w turns for every maxWeight rounds.
                credit[index] += UInt64(backend.weight)
                guard credit[index] >= UInt64(maxWeight) else { continue }
                credit[index] -= UInt64(maxWeight)
                var candidate = (permutations[index].offset + next[index] * permutations[index].skip) % size
                while table[candidate] >= 0 {
                    next[index] += 1
                    candidate = (permutations[index].offset + next[index] * permutations[index].skip) % size
                }
                table[candidate] = index
                next[index] += 1
                filled += 1
            }
        }
        // A backend whose weight is tiny next to the others may have won no
        // entry: give it its first preference, so every backend stays reachable.
        let owned = Set(table)
        for (index, permutation) in permutations.enumerated() where !owned.contains(index) {
            table[permutation.offset] = index
        }
        return table
    }

    private static func fnv1a(_ text: String, seed: UInt64) -> UInt64 {
        var hash = seed
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01B3
        }
        return hash
    }
}
