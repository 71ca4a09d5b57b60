import Synchronization

/// A token bucket: `rate` tokens a second, holding at most `burst`. Taking
/// may go into debt; the debt says how long to wait before taking again.
final class TokenBucket: Sendable {
    private struct State {
        var tokens: Double
        var last: ContinuousClock.Instant
    }

    private let rate: Double
    private let burst: Double
    private let state: Mutex<State>

    init(rate: Int, burst: Int) {
        self.rate = Double(rate)
        self.burst = Double(max(burst, 1))
        state = Mutex(State(tokens: Double(max(burst, 1)), last: ContinuousClock.now))
    }

    /// Takes one token if there is one.
    func tryTake() -> Bool {
        state.withLock { state in
            refill(&state)
            guard state.tokens >= 1 else { return false }
            state.tokens -= 1
            return true
        }
    }

    /// Takes `count` tokens, into debt if need be; returns how long until the
    /// bucket is out of debt (zero if it is not in debt).
    func take(_ count: Int) -> Duration {
        state.withLock { state in
            refill(&state)
            state.tokens -= Double(count)
            return state.tokens >= 0 ? .zero : .nanoseconds(Int64(-state.tokens / rate * 1e9))
        }
    }

    /// How long until the bucket holds `count` tokens (or its whole burst, if smaller).
    func wait(for count: Int) -> Duration {
        state.withLock { state in
            refill(&state)
            let needed = min(Double(count), burst)
            return state.tokens >= needed ? .zero : .nanoseconds(Int64((needed - state.tokens) / rate * 1e9))
        }
    }

    private func refill(_ state: inout State) {
        let now = ContinuousClock.now
        let elapsed = now - state.last
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        state.tokens = min(burst, state.tokens + seconds * rate)
        state.last = now
    }
}
