import Dispatch
import Glibc
import MeshKernel
import NIOCore
import Synchronization

/// A thread that splices L4 connection pairs, and serves plaintext HTTP
/// connections, with epoll, outside NIO.
///
/// Through NIO's pipelines a spliced request cost about three times
/// HAProxy's user-space work: each read and write goes through a pipeline,
/// the pending-writes bookkeeping, reference counting and exclusivity checks
/// (`BENCHMARKS.md`, eleventh session). A connection is still accepted,
/// admitted and connected upstream on NIO; then its two sockets move here
/// (``MeshProxy``), and each event costs what the kernel needs: one
/// `epoll_wait`'s share, one `recv`, one `send` (``SplicedPair``).
/// After moving bytes it may poll for its next event for a few microseconds
/// before it sleeps (``spin(upTo:)``, ``AdaptiveSpin``).
///
/// HTTP's read path through NIO cost about 7,700 user-space instructions a
/// request (`BENCHMARKS.md`, sixteenth session): a plaintext HTTP connection
/// moves here once admitted, and it and its upstream connections are
/// ``LoopSocket``s, driven by the same ``HTTPProxyHandler`` and
/// ``HTTPUpstreamHandler`` as on NIO. For them the loop is an `EventLoop`
/// too: tasks and timed tasks (``LoopTasks``) run on its thread between its
/// socket events, so timers, futures and loop-bound state work as on NIO's loops.
///
/// A tenant on a thread of its own splices on a loop of its own
/// (``TenantThread/spliceLoop()``), at its thread's priority; the tenants of a
/// shared group on the loop beside their event loop (``SharedSpliceLoops``). Commands come
/// from any thread through a queue and an eventfd; everything else runs on
/// the loop's thread. Idle pairs are closed by a sweep every quarter of the
/// shortest idle timeout on the loop, counting its periods: within
/// [timeout, 1.25 × timeout) of silence for pairs of that timeout, and within
/// a quarter of their own and two short periods over it for longer ones (a
/// shared group's tenants share a loop; when a shorter timeout speeds the
/// sweeps up, the silence counted so far, to the moment, is counted again in
/// the shorter periods). (HTTP connections watch their own idleness, as on NIO.)
final class SpliceLoop: Sendable {
    /// The largest read: the loop's one buffer, shared by its pairs.
    static let scratchSize = 65_536

    private enum Command {
        case splice(SpliceRequest, id: UInt64)
        case close(UInt64)
        case stop
    }

    private struct Inbox {
        var commands: [Command] = []
        var stopped = false
        /// Told once the loop's thread has ended (``shutdownGracefully(queue:_:)``).
        var whenEnded: [@Sendable () -> Void] = []
        var ended = false
    }

    /// Epoll's keys besides the pairs' (which are `id << 1 | side`, ids from 2).
    private enum Key {
        static let wakeup: UInt64 = 0
        static let sweep: UInt64 = 1
        static let pauses: UInt64 = 2
        static let tasks: UInt64 = 3
        /// The largest of these keys.
        static let last = tasks
    }

    private let poll: EventPoll
    private let wakeup: Wakeup
    /// Ticks every quarter of the shortest idle timeout while pairs are open.
    private let sweepTimer: MonotonicTimer
    /// Expires at the earliest end of a bandwidth pause.
    private let pauseTimer: MonotonicTimer
    /// Expires at the earliest deadline of a timed task.
    private let taskTimer: MonotonicTimer
    /// What runs on the loop as an `EventLoop` (``execute(_:)``, ``scheduleTask(deadline:_:)``).
    let tasks = LoopTasks()
    /// The loop thread's `pthread_self()`, for ``inEventLoop``.
    let loopThread = Atomic<UInt>(0)
    /// The ``LoopSocket``s on the loop, by poll key and by key: reached on its thread only.
    private let sockets = SocketTable<LoopSocket>()

    private let inbox = Mutex(Inbox())
    private let lastID = Atomic<UInt64>(1)
    private let thread = Atomic<Int32>(0)
    private let running = Atomic<Bool>(true)
    /// How long the loop may poll before it sleeps, in nanoseconds (``AdaptiveSpin``); 0 at first.
    private let spinBudgetNanoseconds = Atomic<Int64>(0)
    /// How often the loop sockets' receive buffer was allocated: at the first
    /// read, and then for each read whose buffer the last read's delegate kept.
    let receiveBuffersAllocated = Atomic<Int>(0)

    /// Starts a loop thread named `name` (as `top -H` shows it). Throws when
    /// its epoll instance, eventfd or timers cannot be made.
    init(name: String) throws(Errno) {
        poll = try EventPoll()
        wakeup = try Wakeup()
        sweepTimer = try MonotonicTimer()
        pauseTimer = try MonotonicTimer()
        taskTimer = try MonotonicTimer()
        try poll.add(wakeup.descriptor, for: .readable, key: Key.wakeup)
        try poll.add(sweepTimer.descriptor, for: .readable, key: Key.sweep)
        try poll.add(pauseTimer.descriptor, for: .readable, key: Key.pauses)
        try poll.add(taskTimer.descriptor, for: .readable, key: Key.tasks)
        let started = DispatchSemaphore(value: 0)
        let handle = startThread { [self] in
            TenantThread.nameCurrentThread(name)
            thread.store(ThreadScheduling.currentThreadID() ?? -1, ordering: .releasing)
            loopThread.store(pthread_self(), ordering: .releasing)
            started.signal()
            run()
            end()
        }
        pthread_detach(handle)
        started.wait()
    }

    /// The longest polling budget a loop keeps (and a configuration may ask for).
    static let longestSpin = Duration.milliseconds(1)

    /// Lets the loop poll for up to `budget` for its next event before it
    /// sleeps, after bytes moved and while that pays (``AdaptiveSpin``);
    /// `.zero` (the start) never polls; at most ``longestSpin`` is kept.
    /// Takes effect at the loop's next wait.
    func spin(upTo budget: Duration) {
        // (Bounded here too, so that no budget can overflow the loop's clock arithmetic.)
        let bounded = min(max(budget, .zero), Self.longestSpin)
        spinBudgetNanoseconds.store(Int64(bounded / .nanoseconds(1)), ordering: .relaxed)
    }

    /// How long the loop may poll before it sleeps (``spin(upTo:)``).
    var spinBudget: Duration { .nanoseconds(spinBudgetNanoseconds.load(ordering: .relaxed)) }

    /// The loop thread's kernel id, for its priority and CPU time (nil if it
    /// could not be read, and once the thread has ended: the kernel may give the id to another).
    var threadID: pid_t? {
        let id = thread.load(ordering: .acquiring)
        return id > 0 && isRunning ? id : nil
    }

    /// Whether the loop's thread is still running (it ends after ``stop()``, or if its epoll wait fails).
    var isRunning: Bool { running.load(ordering: .acquiring) }

    /// The loop's epoll descriptor (for tests that make its waits fail).
    var pollDescriptor: Int32 { poll.descriptor }

    /// A number for a pair to be spliced, or the key of a ``LoopSocket``: unique on this loop.
    func reserveID() -> UInt64 { lastID.add(1, ordering: .relaxed).newValue }

    /// Takes `socket` into the loop's epoll, watching for `events` (on the loop's thread).
    func register(_ socket: LoopSocket, for events: EventPoll.Events) throws(Errno) {
        preconditionInEventLoop()
        guard !sockets.closed else { throw Errno(rawValue: ESHUTDOWN) }
        let pollKey = sockets.insert(socket, key: socket.key)
        do {
            try poll.add(socket.descriptor, for: events, key: pollKey)
        } catch {
            sockets.remove(key: socket.key)
            throw error
        }
        socket.pollKey = pollKey
    }

    /// Watches `socket` for `events` from now on (on the loop's thread).
    func watch(_ socket: LoopSocket, for events: EventPoll.Events) throws(Errno) {
        try poll.modify(socket.descriptor, for: events, key: socket.pollKey)
    }

    /// Takes `socket` out of epoll and the table (it is about to be closed: a
    /// client's descriptor is a duplicate, whose close alone would leave it in epoll).
    func unregister(_ socket: LoopSocket) {
        try? poll.remove(socket.descriptor)
        sockets.remove(key: socket.key)
    }

    /// The open socket of `key` (on the loop's thread).
    func socket(_ key: UInt64) -> LoopSocket? {
        preconditionInEventLoop()
        return sockets.socket(key: key)
    }

    /// Splices `request`'s sockets as pair `id` (from ``reserveID()``): the
    /// loop owns them from now on. False on a stopped loop: the sockets are still the caller's.
    func splice(_ request: SpliceRequest, id: UInt64) -> Bool {
        send(.splice(request, id: id))
    }

    /// Closes pair `id` (a drain's end), if it is still open.
    func close(_ id: UInt64) { _ = send(.close(id)) }

    /// Ends the thread; pairs still open are closed.
    func stop() { _ = send(.stop) }

    /// Wakes the loop from its wait (from another thread; a no-op cost on its own).
    func signalWakeup() { wakeup.signal() }

    /// Queues `command` and wakes the loop; false once the loop is stopping.
    private func send(_ command: Command) -> Bool {
        inbox.withLock { inbox in
            guard !inbox.stopped else { return false }
            if case .stop = command { inbox.stopped = true }
            inbox.commands.append(command)
            wakeup.signal()
            return true
        }
    }

    // MARK: The loop's thread

    /// The pairs and timers, owned by the loop's thread.
    private struct State {
        var pairs: [UInt64: SplicedPair] = [:]
        var pauses: [SplicedPair.Pause] = []
        /// The deadline the pause timer is armed for.
        var pauseDeadline: Int64?
        /// The sweep timer's period while it runs (nanoseconds).
        var sweepPeriod: Int64?
        /// Sweep periods counted so far (the timer's expirations).
        var tick: UInt64 = 0
        /// A tick and when it fell (or would have): the timer's phase since
        /// it was last armed, its later ticks falling every `sweepPeriod`.
        var phase: (tick: UInt64, at: Int64) = (0, 0)

        /// Counts each pair's silence so far in sweep periods of `period`
        /// instead of the `old`, longer ones — the old periods' ticks
        /// (`tick` must include those due) and the part of one elapsed since
        /// the last, at `now`: the sweeps go faster from now on, and a pair
        /// silent for a while must not seem silent for less.
        /// (Ticks wrap: a silence is always `tick &- silentSinceTick`.)
        mutating func recountSilence(inPeriodsOf period: Int64, were old: Int64, now: Int64) {
            let sinceLastTick = max(0, now - (phase.at + Int64(truncatingIfNeeded: tick &- phase.tick) * old))
            for index in pairs.values.indices {
                let silent = Int64(truncatingIfNeeded: tick &- pairs.values[index].silentSinceTick) * old + sinceLastTick
                pairs.values[index].silentSinceTick = tick &- UInt64(silent / period)
            }
        }

        /// Takes pair `id` out of the table, closes it and reports its end.
        mutating func end(_ id: UInt64, _ outcome: SplicedPair.Outcome, poll: borrowing EventPoll) {
            pairs.removeValue(forKey: id)?.close(outcome, poll: poll)
        }

        /// Ends every pair.
        mutating func endAll(_ outcome: SplicedPair.Outcome, poll: borrowing EventPoll) {
            for id in Array(pairs.keys) { end(id, outcome, poll: poll) }
        }
    }

    private func run() {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.scratchSize, alignment: 16)
        defer { scratch.deallocate() }
        // (Allocated at the first read of a loop socket.)
        var received = ReceiveBuffer()
        var state = State()
        var batch = EventPoll.Batch(capacity: 64)
        var spin = AdaptiveSpin(budget: 0)
        var movedBytes = false
        while true {
            let ready: Int
            do {
                spin.budget = spinBudgetNanoseconds.load(ordering: .relaxed)
                ready = try waitForEvents(into: &batch, spin: &spin, afterMovingBytes: movedBytes)
            } catch {
                // Cannot happen with a valid epoll and buffer; the pairs end rather than hang.
                state.endAll(.failed(error), poll: poll)
                refuseCommands()
                return
            }
            movedBytes = false
            var tasksDue = false
            for index in 0..<ready {
                let (events, key) = batch[index]
                switch key {
                case Key.wakeup:
                    guard runCommands(&state) else { return }
                case Key.sweep:
                    sweep(&state)
                case Key.pauses:
                    resumePauses(&state)
                case Key.tasks:
                    tasksDue = true
                case _ where key & SocketTable<LoopSocket>.pollKeyBit != 0:
                    // (A socket closed earlier in this batch is not in the table.)
                    movedBytes = true
                    sockets.socket(polled: key)?.handle(events, reading: &received)
                default:
                    // (A pair ended earlier in this batch is not in the table.)
                    // The pair is changed where it lies in the table (through `values`: no copy out and back).
                    let id = key >> 1
                    guard let slot = state.pairs.index(forKey: id) else { continue }
                    movedBytes = true
                    let outcome = state.pairs.values[slot].handle(events, side: key & 1, scratch: scratch, poll: poll, pauses: &state.pauses)
                    if outcome != .open { state.end(id, outcome, poll: poll) }
                }
            }
            if !state.pauses.isEmpty, case let earliest = state.pauses.lazy.map(\.until).min()!, earliest != state.pauseDeadline {
                state.pauseDeadline = earliest
                pauseTimer.arm(at: earliest)
            }
            runTasks(timerExpired: tasksDue)
        }
    }

    /// Runs the tasks queued to run at once, and with `timerExpired` the
    /// timed ones now due; then moves the task timer to the earliest deadline
    /// left if that changed. (Tasks queued meanwhile run at the next turn,
    /// which then does not wait: see ``waitForEvents(into:spin:afterMovingBytes:)``.)
    private func runTasks(timerExpired: Bool) {
        if timerExpired {
            taskTimer.acknowledge()
            for task in tasks.takeDue(now: MonotonicTimer.now) { task.run() }
        }
        if tasks.hasImmediate {
            for task in tasks.takeImmediate() { task.run() }
        }
        if tasks.takeDeadlineMoved() || timerExpired {
            if let next = tasks.nextDeadline { taskTimer.arm(at: next) } else { taskTimer.disarm() }
        }
    }

    /// The loop's thread ends: queued tasks that were to run at once still
    /// run, timed ones are abandoned (their futures fail), and whoever waits for the end is told.
    private func end() {
        // The sockets still open close with the loop, and no more are taken (a task or a handler
        // that tries is refused); their handlers hear so, and are let go by tasks queued on the loop,
        // which still run.
        sockets.closed = true
        for _ in 0..<100 where !sockets.isEmpty || tasks.hasImmediate {
            for socket in sockets.all { socket.close() }
            for task in tasks.takeImmediate() { task.run() }
        }
        let (immediate, timed) = tasks.close()
        for task in immediate { task.run() }
        for task in timed { task.abandon() }
        running.store(false, ordering: .releasing)
        let waiting = inbox.withLock { inbox in
            inbox.ended = true
            defer { inbox.whenEnded.removeAll() }
            return inbox.whenEnded
        }
        for told in waiting { told() }
        // (Another thread may get this one's id from now on.)
        loopThread.store(0, ordering: .releasing)
    }

    /// Runs `told` once the loop's thread has ended (at once if it has).
    func whenEnded(_ told: @escaping @Sendable () -> Void) {
        let ended = inbox.withLock { inbox in
            if !inbox.ended { inbox.whenEnded.append(told) }
            return inbox.ended
        }
        if ended { told() }
    }

    /// Waits for events; after bytes moved, first polls for up to `spin`'s
    /// budget when it says so. Returns how many entries of `batch` were filled.
    private func waitForEvents(into batch: inout EventPoll.Batch, spin: inout AdaptiveSpin, afterMovingBytes: Bool) throws(Errno) -> Int {
        // (Not while tasks queued on the loop wait: they run next.)
        if afterMovingBytes, !tasks.hasImmediate, spin.shouldPoll() {
            let until = MonotonicTimer.now + spin.budget
            repeat {
                let ready = try poll.wait(into: &batch, milliseconds: 0)
                if ready > 0 {
                    // Only a pair's event is what polling waits for (not a command's or a timer's).
                    spin.record(found: (0..<ready).contains { batch[$0].key > Key.last })
                    return ready
                }
            } while MonotonicTimer.now < until
            spin.record(found: false)
        }
        // (Tasks queued while the last ones ran are run next, after a look at the sockets.)
        return try poll.wait(into: &batch, milliseconds: tasks.hasImmediate ? 0 : -1)
    }

    /// Runs the queued commands; false once told to stop (every pair is then closed).
    private func runCommands(_ state: inout State) -> Bool {
        wakeup.reset()
        let commands = inbox.withLock { inbox in
            defer { inbox.commands.removeAll() }
            return inbox.commands
        }
        for command in commands {
            switch command {
            case .splice(let request, let id):
                var now = MonotonicTimer.now
                var pair = SplicedPair(request, id: id, tick: state.tick)
                let outcome = pair.start(poll)
                let period = max(pair.idleTimeout / 4, 1)
                state.pairs[id] = pair
                guard outcome == .open else {
                    state.end(id, outcome, poll: poll)
                    continue
                }
                if let running = state.sweepPeriod {
                    if running <= period { continue }
                    // Re-arming drops the expirations not yet taken: counted first (and the time read after).
                    state.tick += sweepTimer.acknowledge()
                    now = MonotonicTimer.now
                    state.recountSilence(inPeriodsOf: period, were: running, now: now)
                }
                state.sweepPeriod = period
                state.phase = (state.tick, now)
                sweepTimer.arm(at: now + period, interval: period)
            case .close(let id):
                state.end(id, .finished, poll: poll)
            case .stop:
                state.endAll(.finished, poll: poll)
                return false
            }
        }
        return true
    }

    /// A failed loop takes no more pairs: each one sent from now on is closed at once.
    private func refuseCommands() {
        let commands = inbox.withLock { inbox in
            inbox.stopped = true
            defer { inbox.commands.removeAll() }
            return inbox.commands
        }
        for case .splice(let request, let id) in commands { SplicedPair(request, id: id, tick: 0).close(.finished, poll: poll) }
    }

    /// Resumes the bandwidth pauses that are due.
    private func resumePauses(_ state: inout State) {
        pauseTimer.acknowledge()
        state.pauseDeadline = nil
        let now = MonotonicTimer.now
        var later: [SplicedPair.Pause] = []
        for pause in state.pauses {
            guard pause.until <= now else {
                later.append(pause)
                continue
            }
            guard let slot = state.pairs.index(forKey: pause.pair) else { continue }
            let (outcome, until) = state.pairs.values[slot].resume(pause.side, now: now, poll: poll)
            if let until { later.append(SplicedPair.Pause(until: until, pair: pause.pair, side: pause.side)) }
            if outcome != .open { state.end(pause.pair, outcome, poll: poll) }
        }
        state.pauses = later
    }

    /// Closes the pairs silent for their idle timeout, counted in sweep
    /// periods: a pair active in the period before tick k is silent from k on,
    /// and closes at the first tick at least its timeout later. With no pair
    /// left, the sweeps stop.
    private func sweep(_ state: inout State) {
        state.tick += sweepTimer.acknowledge()
        guard let period = state.sweepPeriod else { return }
        var idle: [UInt64] = []
        for index in state.pairs.values.indices {
            if state.pairs.values[index].active {
                state.pairs.values[index].active = false
                state.pairs.values[index].silentSinceTick = state.tick
            } else if Int64(truncatingIfNeeded: state.tick &- state.pairs.values[index].silentSinceTick) * period >= state.pairs.values[index].idleTimeout {
                idle.append(state.pairs.values[index].id)
            }
        }
        for id in idle { state.end(id, .finished, poll: poll) }
        if state.pairs.isEmpty {
            sweepTimer.disarm()
            state.sweepPeriod = nil
        }
    }
}
