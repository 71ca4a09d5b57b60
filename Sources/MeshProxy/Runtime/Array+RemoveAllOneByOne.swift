extension Array {
    /// Removes every element, keeping the storage: one by one from the end,
    /// which for the few elements of a per-request list costs a fraction of
    /// `removeAll(keepingCapacity: true)`'s generic range replacement.
    mutating func removeAllOneByOne() {
        while popLast() != nil {}
    }
}
