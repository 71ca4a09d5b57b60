import Glibc

extension String {
    /// Whether the string's UTF-8 bytes begin with `prefix`'s: a byte-for-byte
    /// comparison (no Unicode equivalence), one `memcmp` for native strings
    /// where the generic `utf8.starts(with:)` iterates byte by byte.
    func hasBytePrefix(_ prefix: String) -> Bool {
        let count = prefix.utf8.count
        guard count > 0 else { return true }
        guard utf8.count >= count else { return false }
        let compared = utf8.withContiguousStorageIfAvailable { bytes in
            prefix.utf8.withContiguousStorageIfAvailable { wanted in memcmp(bytes.baseAddress!, wanted.baseAddress!, count) == 0 }
        }
        return (compared ?? nil) ?? utf8.starts(with: prefix.utf8)
    }
}
