import Foundation

/// The listening TCP sockets (`ss -ltn`) of this process's network namespace,
/// or of the named one.
public func listeningSockets(in namespace: String? = nil) throws -> String {
    try run((namespace.map { ["ip", "netns", "exec", $0] } ?? []) + ["ss", "-ltn"]).check().output
}

/// Waits until every one of `addresses` (as `ss` prints them: `127.0.0.1:8080`,
/// `[::1]:8080`) is listening — or, with `listening: false`, until none is —
/// in this network namespace or the named one. Polls on a thread of its own,
/// never on the concurrency pool; returns whether the state was reached before
/// `timeout`, and throws why the sockets could not be listed if the last try failed.
public func awaitListeners(_ addresses: [String], listening: Bool = true, in namespace: String? = nil,
                           timeout: Duration = .seconds(10)) async throws -> Bool {
    try await offload { try waitForListeners(addresses, listening: listening, in: namespace, timeout: timeout) }
}

/// ``awaitListeners(_:listening:in:timeout:)`` for synchronous code: polls on the calling thread.
public func waitForListeners(_ addresses: [String], listening: Bool = true, in namespace: String? = nil,
                             timeout: Duration = .seconds(10)) throws -> Bool {
    var failure: (any Error)?
    let reached = eventually(timeout: timeout) {
        do {
            let sockets = try listeningSockets(in: namespace)
            failure = nil
            return addresses.allSatisfy { sockets.contains(" \($0) ") == listening }
        } catch {
            failure = error
            return false
        }
    }
    if !reached, let failure { throw failure }
    return reached
}
