import Glibc
import NIOCore

/// The one buffer a splice loop's ``LoopSocket``s read into, one read after
/// another, each lent to its socket's delegate for the read. A delegate
/// keeps copies of what it holds on to, so the next read finds the buffer
/// free and allocates nothing; one that keeps the buffer itself still loses
/// nothing — the next read's write copies it first (`ByteBuffer` is copied
/// on write: a new 64 KiB, with the old bytes copied into it) — and that
/// read is counted as an allocation.
///
/// A read reaches the buffer's storage once: each reach, in code inlined
/// from NIO, is a run-time exclusivity check.
struct ReceiveBuffer {
    /// The most one read takes.
    static let capacity = 65_536

    /// What the last read took, as its readable bytes.
    private(set) var bytes = ByteBuffer()
    /// Where the last read's storage lay: another address is a new allocation.
    private var storage: UnsafeMutableRawPointer?

    /// Takes what `descriptor` has, once (`recv`), into the buffer from its
    /// start: the count read, or -1 with `errno` (0 at the peer's end).
    /// `allocated` says the read needed new storage (the first read, or one
    /// after a delegate kept the last).
    /// At most `limit` bytes are taken.
    mutating func receive(from descriptor: Int32, limit: Int = capacity) -> (count: Int, allocated: Bool) {
        if bytes.capacity == 0 { bytes = ByteBufferAllocator().buffer(capacity: Self.capacity) }
        // (Indices only: the storage is not reached, so no check of its ownership is paid twice.)
        bytes.moveReaderIndex(to: 0)
        bytes.moveWriterIndex(to: 0)
        var allocated = false
        let count = bytes.withUnsafeMutableWritableBytes { space in
            allocated = space.baseAddress != storage
            storage = space.baseAddress
            return recv(descriptor, space.baseAddress, min(space.count, limit), 0)
        }
        if count > 0 { bytes.moveWriterIndex(forwardBy: count) }
        return (count, allocated)
    }
}
