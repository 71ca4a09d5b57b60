import NIOCore

/// A deadline that moves with every request but rarely fires: at most one
/// task is scheduled at a time, and a task that fires before the current
/// deadline schedules itself again for it, so setting and clearing the
/// deadline per request costs no scheduling. Used on its event loop only;
/// time is the loop's (`EventLoop.now`: an embedded loop's is its own).
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class DeadlineTimer {
    private let eventLoop: any EventLoop
    private let action: () -> Void
    @exclusivity(unchecked) private var deadline: NIODeadline?
    @exclusivity(unchecked) private var pending: Scheduled<Void>?
    @exclusivity(unchecked) private var pendingAt: NIODeadline?

    /// - Parameter action: what happens when a deadline passes (once per deadline set).
    init(eventLoop: any EventLoop, action: @escaping () -> Void) {
        self.eventLoop = eventLoop
        self.action = action
    }

    /// The deadline is now `timeout` from now.
    func set(in timeout: TimeAmount) {
        let deadline = eventLoop.now + timeout
        self.deadline = deadline
        if let pendingAt, pendingAt <= deadline { return }   // the pending task fires first and moves on to this deadline
        schedule(at: deadline)
    }

    /// No deadline (a pending task finds nothing to do).
    func clear() { deadline = nil }

    /// No deadline and no task (the owner is going away).
    func cancel() {
        deadline = nil
        pending?.cancel()
        pending = nil
        pendingAt = nil
    }

    private func schedule(at deadline: NIODeadline) {
        pending?.cancel()
        let timer = NIOLoopBound(self, eventLoop: eventLoop)
        pending = eventLoop.scheduleTask(deadline: deadline) { timer.value.fire() }
        pendingAt = deadline
    }

    private func fire() {
        pending = nil
        pendingAt = nil
        guard let deadline else { return }
        guard eventLoop.now >= deadline else {
            schedule(at: deadline)
            return
        }
        self.deadline = nil
        action()
    }
}
