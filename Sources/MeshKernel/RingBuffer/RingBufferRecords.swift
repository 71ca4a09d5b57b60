import CBPFShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The records of a ``RingBuffer`` as an `AsyncSequence`.
///
/// A reader thread waits on the ring with epoll and copies records, as
/// bytes, into batches that it hands over through a buffer of bounded size;
/// the iterator decodes each record as it is taken, so decoding runs in the
/// consumer's task and specializes for the element type. Iteration ends when
/// ``finish()`` is called, when the consuming task is cancelled, or when the
/// sequence is released. Only one iterator may be created.
public final class RingBufferRecords<Element: Sendable>: AsyncSequence, Sendable {
    @usableFromInline let core: RingBufferReader
    @usableFromInline let decode: @Sendable (UnsafeRawBufferPointer) -> Element?

    @usableFromInline
    init(
        ring: RingBuffer, capacity: Int, overflow: RingBuffer.OverflowPolicy, pollInterval: Duration,
        decode: @escaping @Sendable (UnsafeRawBufferPointer) -> Element?
    ) throws(BPFError) {
        core = try RingBufferReader(ring: ring, capacity: capacity, overflow: overflow, pollInterval: pollInterval)
        self.decode = decode
    }

    deinit { core.shutdown() }

    /// Stops reading from the kernel; iteration ends after the records
    /// already handed over.
    public func finish() { core.stop() }

    /// The reader's counters so far.
    public var statistics: RingBuffer.Statistics { core.statistics }

    /// Why the reader stopped, when a system call failed (iteration then
    /// ends after the records already read); nil while it runs, and after
    /// ``finish()`` or cancellation.
    public var failure: BPFError? { core.failure }

    /// The iterator. Only the first iterator reads records; any later one
    /// ends at once (a ring buffer has one consumer).
    @inlinable
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(records: self, isConsumer: core.claimConsumer())
    }

    /// Iterates the records; takes a whole batch per suspension.
    public struct AsyncIterator: AsyncIteratorProtocol {
        @usableFromInline let records: RingBufferRecords
        @usableFromInline var batch = RecordBatch()
        @usableFromInline var offset = 0
        @usableFromInline let isConsumer: Bool

        @inlinable
        init(records: RingBufferRecords, isConsumer: Bool) {
            self.records = records
            self.isConsumer = isConsumer
        }

        @inlinable
        public mutating func next() async -> Element? {
            guard isConsumer else { return nil }
            while true {
                if offset < batch.bytes.count {
                    let (element, next) = batch.bytes.withUnsafeBytes { bytes -> (Element?, Int) in
                        let size = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                        let start = offset + RecordBatch.headerSize
                        let element = records.decode(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + size)]))
                        return (element, start + RecordBatch.paddedSize(size))
                    }
                    offset = next
                    if let element { return element }
                    records.core.countMalformed()
                    continue
                }
                guard let next = await records.core.nextBatch(returning: batch) else { return nil }
                batch = next
                offset = 0
            }
        }
    }
}

/// Records copied out of the kernel's ring: each is a 4-byte size, 4 bytes
/// of padding, and the record's bytes padded to 8.
public struct RecordBatch: Sendable {
    @usableFromInline static let headerSize = 8
    @usableFromInline var bytes: [UInt8] = []
    @usableFromInline var count = 0

    @usableFromInline init() {}

    @inlinable static func paddedSize(_ size: Int) -> Int { (size + 7) & ~7 }

    mutating func append(_ record: UnsafeRawBufferPointer) {
        withUnsafeBytes(of: UInt64(record.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: record)
        let padding = RecordBatch.paddedSize(record.count) - record.count
        if padding > 0 { bytes.append(contentsOf: repeatElement(0, count: padding)) }
        count += 1
    }

    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        count = 0
    }
}

/// The reader thread and the hand-off state it shares with the consumer.
/// Holds no reference to the public sequence, so releasing that stops it.
@usableFromInline
final class RingBufferReader: @unchecked Sendable {
    private struct State {
        var queue: [RecordBatch] = []
        var queuedRecords = 0
        var spare: [RecordBatch] = []
        var waiter: CheckedContinuation<RecordBatch?, Never>?
        var stopping = false
        var finished = false
        var failure: BPFError?
        var statistics = RingBuffer.Statistics(received: 0, delivered: 0, dropped: 0, malformed: 0)
    }

    private let ring: RingBuffer
    private let lock = ConditionLock(State())
    private let consumerClaimed = Atomic<Bool>(false)
    private let capacity: Int
    private let batchLimit: Int
    private let overflow: RingBuffer.OverflowPolicy
    private let timeout: Int32
    private let epoll: Int32
    private let wakeup: Int32
    private var thread = pthread_t()

    init(ring: RingBuffer, capacity: Int, overflow: RingBuffer.OverflowPolicy, pollInterval: Duration) throws(BPFError) {
        guard capacity > 0 else {
            throw BPFError(.invalidArgument, operation: "read ring buffer", subject: ring.map.description, detail: "buffer capacity must be positive")
        }
        self.ring = ring
        self.capacity = capacity
        self.batchLimit = min(capacity, 8192)
        self.overflow = overflow
        let (seconds, attoseconds) = pollInterval.components
        self.timeout = Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        try ring.claim("read ring buffer")
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeup = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        var failure: Errno? = epoll < 0 || wakeup < 0 ? .current : nil
        for fd in [ring.mapFD, wakeup] where failure == nil {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
            if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 { failure = .current }
        }
        if let failure {
            closeDescriptor(epoll)
            closeDescriptor(wakeup)
            ring.release()
            throw BPFError.system("read ring buffer", ring.map.description, errno: failure)
        }
        thread = startThread { [self] in run() }
    }

    /// Stops the thread, waits for it, and releases the ring for other readers.
    func shutdown() {
        stop()
        pthread_join(thread, nil)
        closeDescriptor(epoll)
        closeDescriptor(wakeup)
        ring.release()
    }

    var statistics: RingBuffer.Statistics { lock.withLock { $0.statistics } }

    var failure: BPFError? { lock.withLock { $0.failure } }

    /// True for the first caller only: the one consumer of this reader.
    @usableFromInline
    func claimConsumer() -> Bool {
        consumerClaimed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    @usableFromInline
    func countMalformed() {
        lock.withLock {
            $0.statistics.malformed += 1
            $0.statistics.delivered -= 1
        }
    }

    /// Asks the reader thread to stop and wakes everyone.
    func stop() {
        let waiter: CheckedContinuation<RecordBatch?, Never>? = lock.withLock { state in
            state.stopping = true
            guard state.queue.isEmpty else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        lock.broadcast()
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
        waiter?.resume(returning: nil)
    }

    /// The reader thread's loop: wait on epoll, drain into a batch, hand it over.
    private func run() {
        var pending = RecordBatch()
        var received: UInt64 = 0
        var events = [epoll_event](repeating: epoll_event(), count: 2)
        var failure: BPFError?
        while !isStopping {
            let ready = epoll_wait(epoll, &events, 2, timeout)
            if ready < 0 && Glibc.errno != EINTR {
                failure = BPFError.system("wait for ring buffer", ring.map.description, errno: .current)
                break
            }
            if isStopping { break }
            do {
                _ = try ring.consumeAvailable { bytes in
                    received += 1
                    pending.append(bytes)
                    if pending.count >= batchLimit { hand(&pending, received: &received) }
                }
            } catch {
                failure = error
            }
            hand(&pending, received: &received)
            if failure != nil { break }
        }
        let waiter: CheckedContinuation<RecordBatch?, Never>? = lock.withLock { state in
            state.finished = true
            state.failure = failure
            state.statistics.received += received
            guard state.queue.isEmpty, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: nil)
    }

    private var isStopping: Bool { lock.withLock { $0.stopping } }

    /// Moves `pending` into the shared queue, waiting for room under backpressure.
    private func hand(_ pending: inout RecordBatch, received: inout UInt64) {
        let incoming = pending.count
        let hasRoom: (State) -> Bool = { [capacity, overflow] state in
            overflow == .dropNewest || state.stopping || state.queuedRecords + incoming <= capacity || state.queue.isEmpty
        }
        let handoff: (CheckedContinuation<RecordBatch?, Never>, RecordBatch)? = lock.wait(until: hasRoom) { state in
            state.statistics.received += received
            received = 0
            guard incoming > 0 else { return nil }
            if state.stopping || state.queuedRecords + incoming > capacity {
                // Only reachable under .dropNewest (or while stopping): drop the whole batch.
                state.statistics.dropped += UInt64(incoming)
                pending.removeAll()
                return nil
            }
            var next = state.spare.popLast() ?? RecordBatch()
            swap(&next, &pending)
            pending.removeAll()
            if let waiter = state.waiter {
                state.waiter = nil
                state.statistics.delivered += UInt64(next.count)
                return (waiter, next)
            }
            state.queue.append(next)
            state.queuedRecords += next.count
            return nil
        }
        if let (continuation, batch) = handoff { continuation.resume(returning: batch) }
    }

    /// The next batch for the consumer, or nil when the sequence has ended;
    /// `used` is recycled for the reader.
    @usableFromInline
    func nextBatch(returning used: RecordBatch) async -> RecordBatch? {
        var used = used
        used.removeAll()
        let recycled = used
        let batch: RecordBatch? = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<RecordBatch?, Never>) in
                let ready: RecordBatch?? = lock.withLock { state in
                    if recycled.bytes.capacity > 0, state.spare.count < 4 { state.spare.append(recycled) }
                    if !state.queue.isEmpty {
                        let batch = state.queue.removeFirst()
                        state.queuedRecords -= batch.count
                        state.statistics.delivered += UInt64(batch.count)
                        return .some(batch)
                    }
                    if state.finished || state.stopping { return .some(nil) }
                    state.waiter = continuation
                    return .none
                }
                if let ready {
                    lock.broadcast()
                    continuation.resume(returning: ready)
                }
            }
        } onCancel: {
            stop()
        }
        return batch
    }
}
