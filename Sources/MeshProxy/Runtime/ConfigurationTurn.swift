import Synchronization

/// Whose turn it is to change a proxy's configuration: one holder at a time.
/// ``MeshProxy/apply(_:)`` takes it or is refused at once; ``MeshProxy/run()``
/// waits for it (suspended, not polling), and is handed it when the holder
/// ends its turn.
final class ConfigurationTurn: Sendable {
    private struct State {
        var taken = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// Takes the turn if no one has it.
    func take() -> Bool {
        state.withLock { state in
            defer { state.taken = true }
            return !state.taken
        }
    }

    /// Takes the turn, once whoever has it ends theirs.
    func wait() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                guard state.taken else {
                    state.taken = true
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Ends the holder's turn: the next waiter, if any, has it now.
    func end() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiting.isEmpty else {
                state.taken = false
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
