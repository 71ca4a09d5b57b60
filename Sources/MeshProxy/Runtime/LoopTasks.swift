import Synchronization

/// The work an event loop of the proxy's own (``SpliceLoop``) runs between
/// its socket events: tasks to run at once, and tasks due at a deadline, in
/// deadline order (those with one deadline in the order they came). Queued
/// from any thread; taken and run on the loop's.
///
/// A timed task that is cancelled leaves the queue at once; only its place
/// in the deadline order stays, to be passed over when it comes up (or
/// dropped when such places are most of the order).
final class LoopTasks: Sendable {
    /// A task: what it does, and what happens instead if it never runs (the loop stops first).
    struct Task: Sendable {
        let run: @Sendable () -> Void
        let abandon: @Sendable () -> Void
    }

    /// A timed task's place in the deadline order.
    private struct Place: Comparable {
        let deadline: Int64
        let id: UInt64

        static func < (lhs: Place, rhs: Place) -> Bool { (lhs.deadline, lhs.id) < (rhs.deadline, rhs.id) }
    }

    private struct Queue: ~Copyable {
        var now: [Task] = []
        /// A binary min-heap of the timed tasks' places (cancelled ones included until they come up).
        var order: [Place] = []
        var timed: [UInt64: Task] = [:]
        var lastID: UInt64 = 0
        var closed = false

        /// The earliest deadline of a task still queued; cancelled ones at the top are dropped.
        mutating func earliest() -> Int64? {
            while let top = order.first {
                if timed[top.id] != nil { return top.deadline }
                popTop()
            }
            return nil
        }

        mutating func push(_ place: Place) {
            order.append(place)
            var child = order.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard order[child] < order[parent] else { break }
                order.swapAt(child, parent)
                child = parent
            }
        }

        mutating func popTop() {
            let last = order.removeLast()
            guard !order.isEmpty else { return }
            order[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var least = parent
                if left < order.count, order[left] < order[least] { least = left }
                if right < order.count, order[right] < order[least] { least = right }
                guard least != parent else { return }
                order.swapAt(parent, least)
                parent = least
            }
        }
    }

    private let queue = Mutex(Queue())
    /// Tasks wait to run at once: read by the loop on every turn, without the lock.
    private let immediate = Atomic<Bool>(false)
    /// A timed task came first in the deadline order since the loop last looked (``takeDeadlineMoved()``).
    private let deadlineMoved = Atomic<Bool>(false)

    /// Queues `task` to run at once. Returns whether the queue was empty of
    /// such tasks (the loop may be asleep: wake it), or nil once the tasks
    /// are closed (``close()``): the task is not queued.
    func enqueue(_ task: Task) -> Bool? {
        queue.withLock { queue in
            guard !queue.closed else { return nil }
            queue.now.append(task)
            immediate.store(true, ordering: .releasing)
            return queue.now.count == 1
        }
    }

    /// Queues `task` to run at `deadline` (`CLOCK_MONOTONIC` nanoseconds).
    /// Returns its id (for ``cancel(_:)``) and whether it is now the earliest
    /// (the loop's timer must move), or nil once the tasks are closed.
    func schedule(at deadline: Int64, _ task: Task) -> (id: UInt64, isEarliest: Bool)? {
        queue.withLock { queue in
            guard !queue.closed else { return nil }
            queue.lastID += 1
            let place = Place(deadline: deadline, id: queue.lastID)
            let earliest = queue.earliest()
            queue.timed[place.id] = task
            queue.push(place)
            let isEarliest = earliest.map { deadline < $0 } ?? true
            if isEarliest { deadlineMoved.store(true, ordering: .releasing) }
            return (place.id, isEarliest)
        }
    }

    /// Takes timed task `id` out of the queue, if it is still there (neither run nor cancelled); returns whether it was.
    @discardableResult
    func cancel(_ id: UInt64) -> Bool {
        queue.withLock { queue in
            guard queue.timed.removeValue(forKey: id) != nil else { return false }
            // Cancelled places are most of the order (timers of connections long closed): it is
            // rebuilt of the live ones (a sorted array is a heap), so it cannot grow without bound.
            if queue.order.count > 64, queue.order.count > 2 * queue.timed.count {
                queue.order = queue.order.filter { queue.timed[$0.id] != nil }.sorted()
            }
            return true
        }
    }

    /// Takes the tasks queued to run at once, in the order they came.
    func takeImmediate() -> [Task] {
        queue.withLock { queue in
            immediate.store(false, ordering: .relaxed)
            defer { queue.now.removeAll() }
            return queue.now
        }
    }

    /// Takes the timed tasks due by `now`, in deadline order.
    func takeDue(now: Int64) -> [Task] {
        queue.withLock { queue in
            var due: [Task] = []
            while let top = queue.order.first, top.deadline <= now {
                queue.popTop()
                if let task = queue.timed.removeValue(forKey: top.id) { due.append(task) }
            }
            return due
        }
    }

    /// Whether tasks wait to run at once (one atomic load: the loop asks on every turn).
    var hasImmediate: Bool { immediate.load(ordering: .acquiring) }

    /// Whether a timed task came first in the deadline order since the last
    /// call (the loop's timer must move); one atomic load when none did.
    func takeDeadlineMoved() -> Bool {
        deadlineMoved.load(ordering: .relaxed) && deadlineMoved.exchange(false, ordering: .acquiringAndReleasing)
    }

    /// The places the deadline order holds, cancelled tasks' included (at most
    /// twice the timed tasks queued, and 64, as cancelling keeps it).
    var placesInOrder: Int { queue.withLock { $0.order.count } }

    /// The earliest deadline of a timed task still queued; nil when there is none.
    var nextDeadline: Int64? { queue.withLock { $0.earliest() } }

    /// Takes no more tasks, and takes out those queued: those that were to
    /// run at once, and the timed ones (for the caller to run or abandon).
    func close() -> (immediate: [Task], timed: [Task]) {
        queue.withLock { queue in
            queue.closed = true
            immediate.store(false, ordering: .relaxed)
            let left = (queue.now, queue.order.sorted().compactMap { queue.timed[$0.id] })
            queue.now.removeAll()
            queue.order.removeAll()
            queue.timed.removeAll()
            return left
        }
    }
}
