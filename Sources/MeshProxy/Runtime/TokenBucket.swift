import Synchronization

/// A token bucket: `rate` tokens a second, holding at most `burst`. Taking
/// may go into debt; the debt says how long to wait before taking again.
final class TokenBucket: Sendable {
    private struct State {
        var tokens: Double
        var last: ContinuousClock.Instant
        var rate: Double
        var burst: Double
    }

    private let state: Mutex<State>

    init(rate: Int, burst: Int) {
        state = Mutex(State(tokens: Double(max(burst, 1)), last: ContinuousClock.now, rate: Double(rate), burst: Double(max(burst, 1))))
    }

    /// Changes the rate and burst in place, for every connection drawing on the bucket.
    func update(rate: Int, burst: Int) {
        state.withLock { state in
            refill(&state)
            state.rate = Double(rate)
            state.burst = Double(max(burst, 1))
            state.tokens = min(state.tokens, state.burst)
        }
    }

    /// Takes one token if there is one.
    func tryTake() -> Bool { takeOne() == .zero }

    /// Takes one token if there is one (zero); else takes none and says how long until there is one.
    func takeOne() -> Duration {
        state.withLock { state in
            refill(&state)
            guard state.tokens < 1 else {
                state.tokens -= 1
                return .zero
            }
            return Self.time(toRefill: 1 - state.tokens, rate: state.rate)
        }
    }

    /// Takes `count` tokens, into debt if need be; returns how long until the
    /// bucket is out of debt (zero if it is not in debt).
    func take(_ count: Int) -> Duration {
        state.withLock { state in
            refill(&state)
            state.tokens -= Double(count)
            return state.tokens >= 0 ? .zero : Self.time(toRefill: -state.tokens, rate: state.rate)
        }
    }

    /// How long `tokens` take to come at `rate` a second.
    private static func time(toRefill tokens: Double, rate: Double) -> Duration {
        .nanoseconds(Int64(tokens / rate * 1e9))
    }

    private func refill(_ state: inout State) {
        let now = ContinuousClock.now
        let elapsed = now - state.last
        let seconds = elapsed.inSeconds
        state.tokens = min(state.burst, state.tokens + seconds * state.rate)
        state.last = now
    }
}
