import Foundation

/// The listening TCP sockets (`ss -ltn`) of this process's network namespace,
/// or of the named one.
public func listeningSockets(in namespace: String? = nil) throws -> String {
    try run((namespace.map { ["ip", "netns", "exec", $0] } ?? []) + ["ss", "-ltn"]).check().output
}

/// Waits until every one of `addresses` (as `ss` prints them: `127.0.0.1:8080`,
/// `[::1]:8080`) is listening — or, with `listening: false`, until none is —
/// in this network namespace or the named one. Polls on a thread of its own,
/// never on the concurrency pool; returns whether the state was reached before `timeout`.
public func awaitListeners(_ addresses: [String], listening: Bool = true, in namespace: String? = nil,
                           timeout: Duration = .seconds(10)) async -> Bool {
    (try? await offload { waitForListeners(addresses, listening: listening, in: namespace, timeout: timeout) }) ?? false
}

/// ``awaitListeners(_:listening:in:timeout:)`` for synchronous code: polls on the calling thread.
public func waitForListeners(_ addresses: [String], listening: Bool = true, in namespace: String? = nil,
                             timeout: Duration = .seconds(10)) -> Bool {
    eventually(timeout: timeout) {
        guard let sockets = try? listeningSockets(in: namespace) else { return false }
        return addresses.allSatisfy { sockets.contains(" \($0) ") == listening }
    }
}
