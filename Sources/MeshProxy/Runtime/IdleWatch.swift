import NIOCore

/// Notices a connection that has been silent for its timeout without reading
/// the clock per event: activity only sets a flag, and a check every quarter
/// of the timeout acts after four checks in a row found none — after between
/// the timeout and a quarter more of silence. Used on its event loop only.
///
/// Its state is `@exclusivity(unchecked)`, for the reason ``HTTPProxyHandler``'s is.
final class IdleWatch {
    /// A quarter of the timeout: how often the watch looks.
    private let period: TimeAmount
    /// Activity since the last check.
    @exclusivity(unchecked) private var active = false
    /// Checks in a row that found no activity.
    @exclusivity(unchecked) private var silentChecks = 0
    /// The repeated check, while the watch runs.
    @exclusivity(unchecked) private var checks: RepeatedTask?

    /// A watch for `timeout` of silence; it starts with ``start(on:action:)``.
    init(timeout: TimeAmount) {
        period = .nanoseconds(max(timeout.nanoseconds / 4, 1))
    }

    /// Starts checking on `eventLoop`, the silence counted from now; `action`
    /// runs once, when the silence is long enough. A running watch starts over
    /// with the new action.
    func start(on eventLoop: any EventLoop, action: @escaping () -> Void) {
        stop()
        active = false
        silentChecks = 0
        let watch = NIOLoopBound(self, eventLoop: eventLoop)
        let act = NIOLoopBound(action, eventLoop: eventLoop)
        checks = eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { _ in
            if watch.value.countCheck() {
                watch.value.stop()
                act.value()
            }
        }
    }

    /// The connection read or wrote: a store, nothing more.
    func noteActivity() { active = true }

    /// No more checks (the connection is going away; idempotent).
    func stop() {
        checks?.cancel()
        checks = nil
    }

    /// Counts one check; whether the silence is now long enough to act on.
    private func countCheck() -> Bool {
        if active {
            active = false
            silentChecks = 0
            return false
        }
        silentChecks += 1
        return silentChecks >= 4
    }
}
