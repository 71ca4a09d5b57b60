import Dispatch
import Glibc
import NIOCore

/// A splice loop is an `EventLoop`: tasks, timed tasks, promises and
/// futures run on its thread between its socket events, so the proxy's
/// timers (``DeadlineTimer``, ``IdleWatch``) and loop-bound state work on it
/// as on NIO's loops.
extension SpliceLoop: EventLoop {
    /// Whether the caller runs on the loop's thread.
    var inEventLoop: Bool { pthread_equal(pthread_self(), loopThread.load(ordering: .relaxed)) != 0 }

    /// Runs `task` on the loop's thread, after what it is doing now. Dropped
    /// once the loop has ended (as NIO drops tasks for a loop shut down).
    func execute(_ task: @escaping @Sendable () -> Void) {
        _ = enqueueTask(task)
    }

    /// Runs `task` on the loop's thread, after what it is doing now (or, if
    /// the loop is ending then, as it ends); false — the task will not run —
    /// once the loop has ended.
    func enqueueTask(_ task: @escaping @Sendable () -> Void) -> Bool {
        guard let wake = tasks.enqueue(LoopTasks.Task(run: task, abandon: {})) else { return false }
        // (On the loop's thread the task runs at the end of this turn: no wake-up needed.)
        if wake, !inEventLoop { signalWakeup() }
        return true
    }

    /// Closes socket `key` (``LoopSocket``) if it is still open (from any thread).
    func closeSocket(_ key: UInt64) {
        execute { [self] in socket(key)?.close() }
    }

    /// Asks the handler of socket `key` (``LoopSocket``), if it is still open, to close it gracefully (from any thread).
    func closeSocketGracefully(_ key: UInt64) {
        execute { [self] in socket(key)?.closeGracefully() }
    }

    /// Runs `task` on the loop's thread at `deadline`; its result completes
    /// the returned future (which fails with `EventLoopError.cancelled` if it
    /// is cancelled first, and `.shutdown` if the loop ends first).
    func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise: EventLoopPromise<T> = makePromise()
        let job = LoopTasks.Task(
            run: {
                // (On the loop's thread, where the promise lives.)
                do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
            },
            abandon: { promise.fail(EventLoopError.shutdown) })
        let at = Int64(clamping: deadline.uptimeNanoseconds)
        guard let (id, isEarliest) = tasks.schedule(at: at, job) else {
            promise.fail(EventLoopError.shutdown)
            return Scheduled(promise: promise, cancellationTask: {})
        }
        // (On the loop's thread the timer moves at the end of this turn.)
        if isEarliest, !inEventLoop { signalWakeup() }
        return Scheduled(promise: promise, cancellationTask: { [tasks] in tasks.cancel(id) })
    }

    /// Runs `task` on the loop's thread after `delay`.
    func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    /// Stops the loop (``stop()``: its pairs close); `callback` runs on
    /// `queue` once the loop's thread has ended.
    func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        stop()
        whenEnded { queue.async { callback(nil) } }
    }

    /// Itself: a loop is a group of one.
    func next() -> any EventLoop { self }

    /// Itself: a loop is a group of one.
    func any() -> any EventLoop { self }

    /// Iterates over itself.
    func makeIterator() -> EventLoopIterator { EventLoopIterator([self]) }
}
