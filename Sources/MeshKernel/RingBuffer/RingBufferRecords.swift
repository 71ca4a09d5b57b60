import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// The records of a ``RingBuffer`` as an `AsyncSequence`.
///
/// A reader thread waits on the ring with epoll, decodes records and hands
/// them over in batches through a buffer of bounded size. Iteration ends when
/// ``finish()`` is called, when the consuming task is cancelled, or when the
/// sequence is released. Only one iterator may be created.
public final class RingBufferRecords<Element: Sendable>: AsyncSequence, Sendable {
    private let core: ReaderCore<Element>
    private let thread: pthread_t

    init(
        ring: RingBuffer, capacity: Int, overflow: RingBuffer.OverflowPolicy, pollInterval: Duration,
        decode: @escaping (UnsafeRawBufferPointer) -> Element?
    ) throws(BPFError) {
        guard capacity > 0 else {
            throw BPFError(.invalidArgument, operation: "read ring buffer", subject: ring.map.description, detail: "buffer capacity must be positive")
        }
        try ring.claim("read ring buffer")
        let core: ReaderCore<Element>
        do {
            core = try ReaderCore(ring: ring, capacity: capacity, overflow: overflow, pollInterval: pollInterval, decode: decode)
        } catch {
            ring.release()
            throw error
        }
        self.core = core
        thread = startThread { core.run() }
    }

    deinit {
        core.stop()
        pthread_join(thread, nil)
        core.close()
    }

    /// Stops reading from the kernel; iteration ends after the records
    /// already handed over.
    public func finish() { core.stop() }

    /// The reader's counters so far.
    public var statistics: RingBuffer.Statistics { core.statistics }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(records: self) }

    /// Iterates the records; takes a whole batch per suspension.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let records: RingBufferRecords
        private var batch: [Element] = []
        private var index = 0

        init(records: RingBufferRecords) { self.records = records }

        public mutating func next() async -> Element? {
            if index < batch.count {
                defer { index += 1 }
                return batch[index]
            }
            guard let next = await records.core.nextBatch(recycling: &batch) else { return nil }
            batch = next
            index = 1
            return batch[0]
        }
    }
}

/// The state shared by the reader thread and the consumer. Holds no
/// reference to the public sequence, so releasing that stops the thread.
final class ReaderCore<Element: Sendable>: @unchecked Sendable {
    private struct State {
        var queue: [Element] = []
        var spare: [Element] = []
        var waiter: CheckedContinuation<[Element]?, Never>?
        var stopping = false
        var finished = false
        var statistics = RingBuffer.Statistics(received: 0, delivered: 0, dropped: 0, malformed: 0)
    }

    private let ring: RingBuffer
    private let lock = ConditionLock(State())
    private let capacity: Int
    private let batchLimit: Int
    private let overflow: RingBuffer.OverflowPolicy
    private let timeout: Int32
    private let decode: (UnsafeRawBufferPointer) -> Element?
    private let epoll: Int32
    private let wakeup: Int32

    init(
        ring: RingBuffer, capacity: Int, overflow: RingBuffer.OverflowPolicy, pollInterval: Duration,
        decode: @escaping (UnsafeRawBufferPointer) -> Element?
    ) throws(BPFError) {
        self.ring = ring
        self.capacity = capacity
        self.batchLimit = min(capacity, 4096)
        self.overflow = overflow
        let (seconds, attoseconds) = pollInterval.components
        self.timeout = Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        self.decode = decode
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw BPFError.system("read ring buffer", "epoll_create1", errno: .current) }
        wakeup = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wakeup >= 0 else {
            let errno = Errno.current
            closeDescriptor(epoll)
            throw BPFError.system("read ring buffer", "eventfd", errno: errno)
        }
        for fd in [ring.mapFD, wakeup] {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
            guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
                let errno = Errno.current
                closeDescriptor(epoll)
                closeDescriptor(wakeup)
                throw BPFError.system("read ring buffer", "epoll_ctl", errno: errno)
            }
        }
    }

    func close() {
        closeDescriptor(epoll)
        closeDescriptor(wakeup)
        ring.release()
    }

    var statistics: RingBuffer.Statistics { lock.withLock { $0.statistics } }

    /// Asks the reader thread to stop and wakes everyone.
    func stop() {
        lock.withLock { $0.stopping = true }
        lock.broadcast()
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
    }

    /// The reader thread's loop: wait on epoll, drain, hand over.
    func run() {
        var pending: [Element] = []
        pending.reserveCapacity(batchLimit)
        var received: UInt64 = 0
        var malformed: UInt64 = 0
        var events = [epoll_event](repeating: epoll_event(), count: 2)
        while !isStopping {
            let ready = epoll_wait(epoll, &events, 2, timeout)
            if ready < 0 && Glibc.errno != EINTR { break }
            if isStopping { break }
            _ = try? ring.consumeAvailable { bytes in
                received += 1
                if let element = decode(bytes) {
                    pending.append(element)
                    if pending.count >= batchLimit { hand(&pending, received: &received, malformed: &malformed) }
                } else {
                    malformed += 1
                }
            }
            hand(&pending, received: &received, malformed: &malformed)
        }
        let waiter: CheckedContinuation<[Element]?, Never>? = lock.withLock { state in
            state.finished = true
            state.statistics.received += received
            state.statistics.malformed += malformed
            guard state.queue.isEmpty, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: nil)
    }

    private var isStopping: Bool { lock.withLock { $0.stopping } }

    /// Moves `pending` into the shared queue, waiting for room under backpressure.
    private func hand(_ pending: inout [Element], received: inout UInt64, malformed: inout UInt64) {
        let hasRoom: (State) -> Bool = { [capacity, overflow, count = pending.count] state in
            overflow == .dropNewest || state.stopping || state.queue.count + count <= capacity || state.queue.isEmpty
        }
        let waiter: (CheckedContinuation<[Element]?, Never>, [Element])? = lock.wait(until: hasRoom) { state in
            state.statistics.received += received
            state.statistics.malformed += malformed
            received = 0
            malformed = 0
            guard !pending.isEmpty else { return nil }
            let room = state.stopping ? 0 : max(0, capacity - state.queue.count)
            if pending.count > room {
                state.statistics.dropped += UInt64(pending.count - room)
                pending.removeLast(pending.count - room)
            }
            if state.queue.isEmpty, !state.spare.isEmpty || state.spare.capacity > 0 {
                swap(&state.queue, &state.spare)
            }
            state.queue.append(contentsOf: pending)
            pending.removeAll(keepingCapacity: true)
            guard let waiter = state.waiter, !state.queue.isEmpty else { return nil }
            state.waiter = nil
            let batch = state.queue
            state.statistics.delivered += UInt64(batch.count)
            state.queue = []
            return (waiter, batch)
        }
        if let (continuation, batch) = waiter { continuation.resume(returning: batch) }
    }

    /// The next batch for the consumer, or nil when the sequence has ended.
    func nextBatch(recycling used: inout [Element]) async -> [Element]? {
        used.removeAll(keepingCapacity: true)
        let spare = used
        used = []
        let batch: [Element]? = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[Element]?, Never>) in
                let ready: [Element]?? = lock.withLock { state in
                    if state.spare.capacity < spare.capacity { state.spare = spare }
                    if !state.queue.isEmpty {
                        let batch = state.queue
                        state.statistics.delivered += UInt64(batch.count)
                        state.queue = []
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
            let waiter: CheckedContinuation<[Element]?, Never>? = lock.withLock { state in
                state.stopping = true
                defer { state.waiter = nil }
                return state.waiter
            }
            stop()
            waiter?.resume(returning: nil)
        }
        lock.broadcast()
        return batch
    }
}
