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
}
