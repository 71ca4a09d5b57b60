import NIOCore

extension Optional<ByteBuffer> {
    /// Appends a read's `bytes` to the input held so far, or holds them as
    /// they are when nothing is held. The held buffer is taken out while it
    /// grows, so it is the only reference and appending does not copy it.
    mutating func appendInput(_ bytes: ByteBuffer) {
        guard var held = self, held.readableBytes > 0 else {
            self = bytes
            return
        }
        self = nil
        held.writeImmutableBuffer(bytes)
        self = held
    }

    /// Lets go of `read`, the buffer a read was lent in, once it is handled:
    /// nothing is held when all of the input was taken, and what is left of
    /// it, when that still lies in `read`, is held in a copy of its size. (A
    /// loop socket reads into one buffer for all its loop's sockets: free
    /// again, the next read needs no allocation.)
    mutating func letGo(of read: ByteBuffer) {
        guard let held = self else { return }
        guard held.readableBytes > 0 else {
            self = nil
            return
        }
        if held.lies(in: read) { self = Self.allocator.buffer(buffer: held) }
    }

    private static var allocator: ByteBufferAllocator { ByteBufferAllocator() }
}

extension ByteBuffer {
    /// Whether the buffer's bytes lie in `other`'s storage (it is `other`, or a slice of it).
    func lies(in other: ByteBuffer) -> Bool {
        withVeryUnsafeBytes { mine in
            other.withVeryUnsafeBytes { theirs in
                guard let start = mine.baseAddress, let base = theirs.baseAddress else { return false }
                return start >= base && start < base + theirs.count
            }
        }
    }
}
