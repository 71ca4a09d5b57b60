import Foundation

/// The outcome of a finished child process.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var output: String
    public var error: String

    /// Throws unless the process exited with status 0.
    @discardableResult
    public func check() throws -> ProcessResult {
        guard status == 0 else { throw SubprocessError.failed(status: status, output: output, error: error) }
        return self
    }
}

public enum SubprocessError: Error, CustomStringConvertible {
    case failed(status: Int32, output: String, error: String)
    case timedOut(command: String)
    public var description: String {
        switch self {
        case .failed(let status, let output, let error): "exit \(status)\nstdout: \(output)\nstderr: \(error)"
        case .timedOut(let command): "timed out: \(command)"
        }
    }
}

/// Runs a command (found on PATH) to completion, bounded by `timeout`.
public func run(_ arguments: [String], input: String? = nil, timeout: Duration = .seconds(60)) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let output = Pipe(), error = Pipe(), stdin = Pipe()
    process.standardOutput = output
    process.standardError = error
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    try? stdin.fileHandleForWriting.close()
    // Drain both pipes, each on a thread of its own, so a chatty child never
    // blocks. Not on Dispatch's global queue: its few threads can all be held
    // by other tests' blocking work, and the output then went unread (a child
    // that printed "ok" and exited 0 came back with no output at all).
    let collected = CollectedOutput()
    let group = DispatchGroup()
    for (pipe, isError) in [(output, false), (error, true)] {
        group.enter()
        Thread {
            while case let data = pipe.fileHandleForReading.availableData, !data.isEmpty {
                collected.append(data, isError: isError)
            }
            group.leave()
        }.start()
    }
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while process.isRunning && clock.now < deadline { usleep(2_000) }
    if process.isRunning {
        process.terminate()
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        _ = group.wait(timeout: .now() + .seconds(5))
        throw SubprocessError.timedOut(command: arguments.joined(separator: " "))
    }
    process.waitUntilExit()
    // A grandchild that outlived the child may still hold the pipes open; don't wait for it forever.
    _ = group.wait(timeout: .now() + .seconds(5))
    return ProcessResult(status: process.terminationStatus, output: collected.output, error: collected.error)
}

/// The arguments that run a shell command as a member of a cgroup (it moves
/// itself in before doing anything), optionally inside a network namespace.
public func cgroupCommand(_ cgroupPath: String, namespace: String? = nil, _ command: String) -> [String] {
    // Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup v2 mount.
    let enter = namespace.map { "ip netns exec \($0) " } ?? ""
    return ["sh", "-c", "echo $$ > \(cgroupPath)/cgroup.procs && exec \(enter)\(command)"]
}

/// Runs a shell command to completion as a member of a cgroup, optionally inside a network namespace.
public func runInCgroup(_ cgroupPath: String, namespace: String? = nil, _ command: String, timeout: Duration = .seconds(60)) throws -> ProcessResult {
    try run(cgroupCommand(cgroupPath, namespace: namespace, command), timeout: timeout)
}

/// A process running in the background (a server, a long-lived client),
/// killed by ``stop()``; call it in a `defer` so it never outlives the test.
public final class Background {
    let process = Process()
    let output = Pipe()

    /// Starts `arguments` (found on PATH).
    public init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    /// The process id.
    public var pid: pid_t { process.processIdentifier }

    /// Whether the process has not exited yet.
    public var isRunning: Bool { process.isRunning }

    /// The exit status once it has exited (nil while it runs).
    public var exitStatus: Int32? { process.isRunning ? nil : process.terminationStatus }

    /// Asks the process to end (SIGTERM) and waits up to `timeout` for it:
    /// its exit status, or nil if it is still running then.
    public func terminate(timeout: Duration = .seconds(15)) -> Int32? {
        kill(process.processIdentifier, SIGTERM)
        return eventually(timeout: timeout) { !isRunning } ? exitStatus : nil
    }

    /// ``terminate(timeout:)`` for async tests (waiting without holding a thread).
    public func terminate(timeout: Duration = .seconds(15)) async -> Int32? {
        kill(process.processIdentifier, SIGTERM)
        return await eventually(timeout: timeout) { !isRunning } ? exitStatus : nil
    }

    /// Waits up to `timeout` for the process to exit on its own, then
    /// ``stop()``s it: what it printed, followed by ``Background/killedMark``
    /// if it was still running then (and so is never what a test expects).
    public func finish(timeout: Duration = .seconds(10)) async -> String {
        let exited = await eventually(timeout: timeout) { !isRunning }
        return stop() + (exited ? "" : Self.killedMark)
    }

    /// What ``finish(timeout:)`` adds to the output of a process it had to kill.
    public static let killedMark = "[killed: still running at the deadline]"

    /// Kills the process (if still running) and returns what it has printed.
    @discardableResult
    public func stop() -> String {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
    }
}

extension Array where Element == Background {
    /// ``Background/finish(timeout:)`` for all the processes, with one deadline.
    public func finish(timeout: Duration = .seconds(10)) async -> [String] {
        _ = await eventually(timeout: timeout) { allSatisfy { !$0.isRunning } }
        return map { process in
            let running = process.isRunning
            return process.stop() + (running ? Background.killedMark : "")
        }
    }
}

private final class CollectedOutput: @unchecked Sendable {
    private let lock = NSLock()
    private var outputBytes = Data(), errorBytes = Data()
    var output: String { lock.withLock { String(decoding: outputBytes, as: UTF8.self) } }
    var error: String { lock.withLock { String(decoding: errorBytes, as: UTF8.self) } }
    func append(_ data: Data, isError: Bool) {
        lock.withLock { if isError { errorBytes += data } else { outputBytes += data } }
    }
}

/// The directory of the build products (`.build/debug`), where the package's executables are.
public var buildProductsDirectory: URL {
    URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
}

/// Runs blocking work (subprocesses, file polling) on a thread of its own, so
/// async tests never hold one of the concurrency pool's few threads while
/// they wait (a 2-core machine has two, and other suites need them).
public func offload<R: Sendable>(_ work: @escaping @Sendable () throws -> R) async throws -> R {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}
