import MeshTestSupport
import NIOCore
import Synchronization
import Testing
@testable import MeshProxy

@Suite("A splice loop as an EventLoop: tasks, timed tasks and futures on its thread")
struct SpliceLoopEventLoopTests {
    @Test("tasks from other threads run on the loop's thread, in the order they came; a task queued by a task runs too, without a wake-up from outside")
    func tasksInOrder() async throws {
        let loop = try SpliceLoop(name: "test-tasks")
        defer { loop.stop() }
        #expect(!loop.inEventLoop)
        let seen = Mutex<[Int]>([])
        let onLoop = Atomic<Int>(0)
        for index in 0..<100 {
            loop.execute {
                if loop.inEventLoop { onLoop.add(1, ordering: .relaxed) }
                seen.withLock { $0.append(index) }
                if index == 99 { loop.execute { seen.withLock { $0.append(100) } } }
            }
        }
        let all = try await loop.submit { () -> Bool in loop.inEventLoop }.get()
        #expect(all, "submit runs on the loop")
        #expect(await eventually(timeout: .seconds(10)) { seen.withLock { $0.count } == 101 })
        #expect(seen.withLock { $0 } == Array(0...100))
        #expect(onLoop.load(ordering: .relaxed) == 100)
    }

    @Test("timed tasks run in deadline order and never early, scheduled from outside and from the loop itself (an earlier one moves the loop's timer); their futures carry their results")
    func timedInOrder() async throws {
        let loop = try SpliceLoop(name: "test-timed")
        defer { loop.stop() }
        let start = NIODeadline.now()
        let fired = Mutex<[(Int, TimeAmount)]>([])
        @Sendable func note(_ label: Int) -> Int {
            fired.withLock { $0.append((label, NIODeadline.now() - start)) }
            return label
        }
        // Scheduled out of order, from outside.
        let late = loop.scheduleTask(deadline: start + .milliseconds(1200)) { note(1200) }
        let middle = loop.scheduleTask(deadline: start + .milliseconds(1000)) { note(1000) }
        // From the loop, one earlier than all: the loop's timer, armed for 1 s, must move.
        let early = try await loop.submit {
            loop.scheduleTask(deadline: start + .milliseconds(50)) { note(50) }.futureResult
        }.get()
        #expect(try await late.futureResult.get() == 1200)
        #expect(try await middle.futureResult.get() == 1000)
        #expect(try await early.get() == 50)
        let order = fired.withLock { $0 }
        #expect(order.map(\.0) == [50, 1000, 1200])
        for (label, after) in order {
            #expect(after >= .milliseconds(Int64(label)), "task \(label) ran after \(after)")
        }
        // (Had the timer not moved, the first would have waited for the second's deadline.)
        #expect(order.first.map { $0.1 < .milliseconds(900) } == true, "the earliest ran after \(order.first?.1 ?? .zero)")
    }

    @Test("a cancelled timed task never runs and its future fails as cancelled; the others still run")
    func cancelled() async throws {
        let loop = try SpliceLoop(name: "test-cancel")
        defer { loop.stop() }
        let ran = Atomic<Int>(0)
        let cancelled = loop.scheduleTask(in: .milliseconds(50)) { ran.add(1, ordering: .relaxed) }
        let kept = loop.scheduleTask(in: .milliseconds(100)) { ran.add(10, ordering: .relaxed) }
        cancelled.cancel()
        await #expect(throws: EventLoopError.cancelled) { try await cancelled.futureResult.get() }
        _ = try await kept.futureResult.get()
        #expect(ran.load(ordering: .relaxed) == 10)
    }

    @Test("cancelled timed tasks do not pile up in the deadline order (timers of connections long closed): it is rebuilt of the live ones, which still come due in order")
    func cancelledCompacted() {
        let tasks = LoopTasks()
        let ran = Mutex<[Int64]>([])
        var ids: [Int64: UInt64] = [:]
        // Deadlines 1...1000 nanoseconds, queued out of order.
        for deadline in (1...1000).map({ Int64($0) }).shuffled() {
            ids[deadline] = tasks.schedule(at: deadline, LoopTasks.Task(run: { ran.withLock { $0.append(deadline) } }, abandon: {}))!.id
        }
        let kept = Set(stride(from: Int64(100), through: 1000, by: 100))
        for (deadline, id) in ids where !kept.contains(deadline) { #expect(tasks.cancel(id)) }
        #expect(tasks.placesInOrder <= 64, "\(tasks.placesInOrder) places for \(kept.count) tasks")
        #expect(tasks.nextDeadline == 100)
        for task in tasks.takeDue(now: 550) { task.run() }
        for task in tasks.takeDue(now: .max) { task.run() }
        #expect(ran.withLock { $0 } == kept.sorted())
        #expect(tasks.nextDeadline == nil)
    }

    @Test("the proxy's timers work on it: a DeadlineTimer fires once at its moved deadline, an IdleWatch acts after its silence")
    func proxyTimers() async throws {
        let loop = try SpliceLoop(name: "test-timers")
        defer { loop.stop() }
        let firings = Mutex<[TimeAmount]>([])
        let idled = Atomic<Bool>(false)
        let start = NIODeadline.now()
        try await loop.submit {
            let timer = DeadlineTimer(eventLoop: loop) { firings.withLock { $0.append(NIODeadline.now() - start) } }
            timer.set(in: .milliseconds(20))
            timer.set(in: .milliseconds(80))
            let watch = IdleWatch(timeout: .milliseconds(100))
            watch.start(on: loop) { idled.store(true, ordering: .relaxed) }
            // Kept until they are done.
            let kept = NIOLoopBound((timer, watch), eventLoop: loop)
            _ = loop.scheduleTask(in: .seconds(1)) { kept.value.0.cancel(); kept.value.1.stop() }
        }.get() as Void
        #expect(await eventually(timeout: .seconds(10)) { idled.load(ordering: .relaxed) })
        #expect(await eventually(timeout: .seconds(10)) { !firings.withLock { $0.isEmpty } })
        let seen = firings.withLock { $0 }
        #expect(seen.count == 1 && seen[0] >= .milliseconds(80), "fired \(seen)")
    }

    @Test("when the loop ends, tasks queued to run at once still run, its timed tasks' futures fail as shut down, and later tasks are refused; shutdownGracefully tells once the thread has ended")
    func shutdown() async throws {
        let loop = try SpliceLoop(name: "test-end")
        let outcomes = Mutex<[String]>([])
        // (Completions are registered while the loop runs: a loop that has ended runs no more callbacks, as NIO's do not.)
        let pending = loop.scheduleTask(in: .seconds(3600)) { 1 }
        pending.futureResult.whenComplete { result in outcomes.withLock { $0.append("timed: \(result)") } }
        // (Told from inside the task, not through its future: a callback registered from this
        // thread after the loop has stopped would be dropped, as NIO drops it, and never run.)
        await withCheckedContinuation { (stopped: CheckedContinuation<Void, Never>) in
            loop.execute {
                // Queued on the loop, behind the stop below: it runs as the loop ends.
                loop.execute { outcomes.withLock { $0.append("at once") } }
                loop.stop()
                stopped.resume()
            }
        }
        let ended = try await withCheckedThrowingContinuation { (done: CheckedContinuation<Bool, any Error>) in
            loop.shutdownGracefully(queue: .global()) { error in
                if let error { done.resume(throwing: error) } else { done.resume(returning: !loop.isRunning) }
            }
        }
        #expect(ended, "told after the thread ended")
        #expect(outcomes.withLock { $0 } == ["at once", "timed: failure(\(EventLoopError.shutdown))"])
        #expect(loop.tasks.enqueue(LoopTasks.Task(run: {}, abandon: {})) == nil, "refused")
        #expect(loop.tasks.schedule(at: 0, LoopTasks.Task(run: {}, abandon: {})) == nil, "refused")
    }
}
