import CBPFShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A BPF ring buffer map (`BPF_MAP_TYPE_RINGBUF`) read from Swift.
///
/// Read records as an `AsyncSequence`, raw or typed:
///
/// ```swift
/// let events = try RingBuffer(object.map("events")).records(as: FlowEvent.self)
/// for await event in events { handle(event) }
/// print(events.statistics)   // received, delivered, dropped, malformed
/// ```
///
/// or drain synchronously at full speed with ``drain(_:)``. A dedicated
/// thread waits on the map with epoll and hands records to the sequence in
/// batches through a bounded buffer; see ``OverflowPolicy``.
public final class RingBuffer: @unchecked Sendable {
    /// What the reader does when the sequence's buffer is full.
    public enum OverflowPolicy: Sendable {
        /// Stop reading from the kernel until the consumer catches up: records
        /// wait in the kernel's ring, and once that is full the BPF program's
        /// `bpf_ringbuf_reserve` fails (count that on the BPF side). Nothing
        /// is dropped in user space.
        case backpressure
        /// Keep the kernel ring empty and drop records that do not fit,
        /// counting them in ``Statistics/dropped``.
        case dropNewest
    }

    /// Counters of one ring buffer reader.
    public struct Statistics: Sendable, Equatable, CustomStringConvertible {
        /// Records taken from the kernel's ring.
        public var received: UInt64
        /// Records handed to the consumer.
        public var delivered: UInt64
        /// Records dropped because the buffer was full (``OverflowPolicy/dropNewest``).
        public var dropped: UInt64
        /// Records too short for the typed element, skipped.
        public var malformed: UInt64
        public var description: String {
            "received \(received), delivered \(delivered), dropped \(dropped), malformed \(malformed)"
        }
    }

    /// The ring buffer map.
    public let map: BPFMap
    let mapFD: Int32
    private let ring: OpaquePointer
    private let sink: RecordSink
    private let inUse = Atomic<Bool>(false)

    /// Opens a ring buffer map for reading (maps its pages into this process).
    public init(_ map: BPFMap) throws(BPFError) {
        guard map.type == .ringBuffer else {
            throw BPFError(.invalidArgument, operation: "open ring buffer", subject: map.description, detail: "the map is a \(map.type), not a ringbuf")
        }
        self.map = map
        self.mapFD = try map.descriptor()
        let sink = RecordSink()
        self.sink = sink
        let context = Unmanaged.passUnretained(sink).toOpaque()
        let fd = mapFD
        ring = try LibBPF.pointer("open ring buffer", map.description) {
            ring_buffer__new(fd, { context, data, size in
                let sink = Unmanaged<RecordSink>.fromOpaque(context!).takeUnretainedValue()
                return sink.handler.pointee(UnsafeRawBufferPointer(start: data, count: size))
            }, context, nil)
        }
    }

    deinit { ring_buffer__free(ring) }

    /// Drains every record available now, calling `body` for each; returns
    /// the number of records. The fastest way to read (no copy, no thread).
    ///
    /// Only one reader may use a ring buffer at a time.
    public func drain(_ body: (UnsafeRawBufferPointer) -> Void) throws(BPFError) -> Int {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw BPFError(.invalidState, operation: "drain ring buffer", subject: map.description, detail: "another reader is using it")
        }
        defer { inUse.store(false, ordering: .releasing) }
        return try consumeAvailable(body)
    }

    /// Calls `ring_buffer__consume` with `body` as the record callback.
    func consumeAvailable(_ body: (UnsafeRawBufferPointer) -> Void) throws(BPFError) -> Int {
        let count = withoutActuallyEscaping(body) { body in
            sink.handler.pointee = { body($0); return 0 }
            defer { sink.handler.pointee = { _ in 0 } }
            return ring_buffer__consume(ring)
        }
        if count < 0 { throw BPFError.system("consume ring buffer", map.description, errno: Errno(rawValue: -count)) }
        return Int(count)
    }

    /// Records decoded by `decode`, which sees each record's bytes (valid only
    /// during the call) and returns nil to skip a record, counted as malformed.
    ///
    /// - Parameters:
    ///   - bufferCapacity: records held between the reader thread and the consumer.
    ///   - overflow: what happens when that buffer is full.
    ///   - pollInterval: how often the reader looks at the ring even without a
    ///     wake-up, for programs that submit with `BPF_RB_NO_WAKEUP`.
    ///   - decode: turns a record's bytes into an element; runs in the consumer's task.
    @inlinable
    public func records<T: Sendable>(
        bufferCapacity: Int = 65_536, overflow: OverflowPolicy = .backpressure, pollInterval: Duration = .milliseconds(10),
        decodedBy decode: @escaping @Sendable (UnsafeRawBufferPointer) -> T?
    ) throws(BPFError) -> RingBufferRecords<T> {
        try RingBufferRecords(ring: self, capacity: bufferCapacity, overflow: overflow, pollInterval: pollInterval, decode: decode)
    }

    /// Records as copies of their bytes (see ``records(bufferCapacity:overflow:pollInterval:decodedBy:)``).
    @inlinable
    public func records(
        bufferCapacity: Int = 65_536, overflow: OverflowPolicy = .backpressure, pollInterval: Duration = .milliseconds(10)
    ) throws(BPFError) -> RingBufferRecords<[UInt8]> {
        try records(bufferCapacity: bufferCapacity, overflow: overflow, pollInterval: pollInterval) { Array($0) }
    }

    /// Records decoded as `T`, a fixed-layout type mirroring the C event
    /// struct; records shorter than `T` are skipped and counted as malformed.
    @inlinable
    public func records<T: BitwiseCopyable & Sendable>(
        as type: T.Type, bufferCapacity: Int = 65_536, overflow: OverflowPolicy = .backpressure,
        pollInterval: Duration = .milliseconds(10)
    ) throws(BPFError) -> RingBufferRecords<T> {
        try records(bufferCapacity: bufferCapacity, overflow: overflow, pollInterval: pollInterval) { bytes in
            bytes.count >= MemoryLayout<T>.size ? bytes.loadUnaligned(as: T.self) : nil
        }
    }

    func claim(_ operation: BPFError.Operation) throws(BPFError) {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw BPFError(.invalidState, operation: operation, subject: map.description, detail: "another reader is using it")
        }
    }

    func release() { inUse.store(false, ordering: .releasing) }
}

/// Holds the current record callback; libbpf calls it through a C function
/// pointer. The callback sits behind a pointer so the per-record call needs
/// no exclusivity check on a class property.
final class RecordSink: @unchecked Sendable {
    typealias Handler = (UnsafeRawBufferPointer) -> Int32
    let handler: UnsafeMutablePointer<Handler>

    init() {
        handler = .allocate(capacity: 1)
        handler.initialize(to: { _ in 0 })
    }

    deinit {
        handler.deinitialize(count: 1)
        handler.deallocate()
    }
}
