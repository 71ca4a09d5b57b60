import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Ring buffers as AsyncSequence", .kernel)
struct RingBufferTests {
    let object: BPFObject
    let producer: BPFProgram
    let lost: ArrayMap<UInt64>

    init() throws {
        object = try BPFObject.open(.maps)
        try object.load()
        producer = try object.program("produce_events")
        lost = try ArrayMap(object.map("events_lost"))
    }

    func produce(_ count: UInt32, from first: UInt64, kind: UInt32 = 1) throws {
        var args = ProduceArgs(count: count, kind: kind, firstSequence: first)
        try producer.testRun(context: &args)
    }

    /// Produces `total` records in chunks the kernel ring can hold, waiting for the reader between chunks.
    func produceAll(_ total: Int, chunk: Int, reader: RingBufferRecords<some Sendable>) async throws {
        for start in stride(from: 0, to: total, by: chunk) {
            let count = min(chunk, total - start)
            try produce(UInt32(count), from: UInt64(start))
            #expect(await eventually(timeout: .seconds(20)) { reader.statistics.received >= UInt64(start + count) })
        }
    }

    @Test("100,000 typed records arrive in order with none lost")
    func typedRecordsNoneLost() async throws {
        let ring = try RingBuffer(object.map("events"))
        let records = try ring.records(as: TestEvent.self)
        let total = 100_000
        let consumer = Task {
            var expected: UInt64 = 0
            var inOrder = true
            for await event in records {
                if event.sequence != expected || event.kind != 1 || event.value != (expected % 20_000) * 3 + 1 { inOrder = false }
                expected += 1
                if expected == UInt64(total) { break }
            }
            return (expected, inOrder)
        }
        try await produceAll(total, chunk: 20_000, reader: records)
        let watchdog = Task { try await Task.sleep(for: .seconds(30)); records.finish() }   // never hang on a lost record
        let (count, inOrder) = await consumer.value
        watchdog.cancel()
        #expect(count == UInt64(total))
        #expect(inOrder)
        #expect(try lost.value(at: 0) == 0)
        let statistics = records.statistics
        #expect(statistics.received == UInt64(total))
        #expect(statistics.dropped == 0 && statistics.malformed == 0)
        #expect(records.failure == nil)
    }

    @Test("backpressure: a small buffer and a slow consumer still lose nothing")
    func backpressure() async throws {
        let records = try RingBuffer(object.map("events")).records(as: TestEvent.self, bufferCapacity: 64)
        let total = 5_000
        let consumer = Task {
            var count = 0
            for await _ in records {
                count += 1
                if count % 500 == 0 { try? await Task.sleep(for: .milliseconds(2)) }
                if count == total { break }
            }
            return count
        }
        try await produceAll(total, chunk: 1_000, reader: records)
        let watchdog = Task { try await Task.sleep(for: .seconds(30)); records.finish() }   // never hang on a lost record
        #expect(await consumer.value == total)
        watchdog.cancel()
        #expect(records.statistics.dropped == 0)
        #expect(try lost.value(at: 0) == 0)
    }

    @Test("dropNewest: a full buffer drops and counts, and received = delivered + dropped")
    func dropNewest() async throws {
        let ring = try RingBuffer(object.map("events"))
        // All records wait in the kernel's ring before the reader starts, so the
        // reader's first batch fills the buffer and every later one is dropped.
        try produce(5_000, from: 0)
        let records = try ring.records(as: TestEvent.self, bufferCapacity: 100, overflow: .dropNewest)
        #expect(await eventually { records.statistics.received == 5_000 })
        records.finish()
        var delivered = 0
        for await _ in records { delivered += 1 }
        let statistics = records.statistics
        #expect(delivered == 100)
        #expect(statistics.dropped == 4_900)
        #expect(statistics.delivered == 100)
        #expect(statistics.received == statistics.delivered + statistics.dropped)
    }

    @Test("a second iterator ends at once instead of waiting forever")
    func secondIterator() async throws {
        let records = try RingBuffer(object.map("events")).records(as: TestEvent.self)
        var first = records.makeAsyncIterator()
        var second = records.makeAsyncIterator()
        #expect(await second.next() == nil)
        try produce(1, from: 42)
        #expect(await first.next()?.sequence == 42)
    }

    @Test("cancelling the consuming task ends the iteration")
    func cancellation() async throws {
        let records = try RingBuffer(object.map("events")).records(as: TestEvent.self)
        let consumer = Task {
            var count = 0
            for await _ in records { count += 1 }
            return count
        }
        try await Task.sleep(for: .milliseconds(20))
        consumer.cancel()
        #expect(await consumer.value == 0)
    }

    @Test("raw records, synchronous drain, malformed records and a second reader")
    func rawAndDrain() async throws {
        let ring = try RingBuffer(object.map("events"))
        try produce(1_000, from: 0)
        var drained = 0
        var sizes = Set<Int>()
        _ = try ring.drain { bytes in
            drained += 1
            sizes.insert(bytes.count)
        }
        #expect(drained == 1_000)
        #expect(sizes == [MemoryLayout<TestEvent>.size])

        let raw = try ring.records()
        let busy = try #require(throws: BPFError.self) { try ring.drain { _ in } }
        #expect(busy.code == .invalidState)
        try produce(3, from: 10)
        var iterator = raw.makeAsyncIterator()
        let first = try #require(await iterator.next())
        #expect(first.count == MemoryLayout<TestEvent>.size)
        #expect(first.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } == 10)
        raw.finish()

        struct TooBig: BitwiseCopyable { var a: (UInt64, UInt64, UInt64, UInt64, UInt64) }
        let secondRing = try RingBuffer(object.map("events"))
        let big = try secondRing.records(as: TooBig.self)
        try produce(10, from: 0)
        #expect(await eventually { big.statistics.received == 10 })
        big.finish()
        var decoded = 0
        for await _ in big { decoded += 1 }
        #expect(decoded == 0)
        #expect(big.statistics.malformed == 10)
        #expect(big.statistics.delivered == 0)
    }
}
