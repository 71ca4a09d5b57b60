import Foundation
import MeshKernel
import Testing

/// Facts about where the tests run.
public enum KernelTest {
    /// Whether this is a CI run (`CI=true`): kernel tests then never skip.
    public static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Whether the process can load BPF programs (root with CAP_BPF and CAP_SYS_ADMIN).
    public static let isPrivileged = getuid() == 0 && Capability.bpf.isEffective && Capability.sysAdmin.isEffective

    /// Kernel tests run when privileged, and always in CI (where lacking privilege is a failure).
    public static let enabled = isPrivileged || isCI

    /// Whether this test process runs one suite alone (`MESH_TEST_ALONE=1`,
    /// as `make test` runs the suites that need it): a test may then move the
    /// process itself into a cgroup, with no other test's sockets or children following it.
    public static let runsAlone = ProcessInfo.processInfo.environment["MESH_TEST_ALONE"] == "1"
}

extension Trait where Self == ConditionTrait {
    /// Runs a test only where BPF programs can be loaded; in CI it always runs.
    public static var kernel: Self {
        .enabled(if: KernelTest.enabled, "needs root with CAP_BPF and CAP_SYS_ADMIN (never skipped with CI=true)")
    }

    /// Runs a test only with CAP_SYS_NICE (to raise a thread's priority); in CI it always runs.
    public static var sysNice: Self {
        .enabled(if: Capability.sysNice.isEffective || KernelTest.isCI, "needs CAP_SYS_NICE (never skipped with CI=true)")
    }

    /// Runs a test only in a test process of its own (``KernelTest/runsAlone``): `make test` runs it so.
    public static var alone: Self {
        .enabled(if: KernelTest.runsAlone, "moves the test process into a cgroup: run alone, as `make test` does (MESH_TEST_ALONE=1)")
    }
}

/// A name no other test (or earlier run) uses: `mk<tag><pid><counter>`, short
/// enough for kernel object names (15 characters) where needed.
public func uniqueName(_ tag: String) -> String {
    let counter = UniqueCounter.next()
    return "mk\(tag)\(getpid() % 100_000)x\(counter)"
}

private enum UniqueCounter {
    nonisolated(unsafe) static var value = 0
    static let lock = NSLock()
    static func next() -> Int {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return value
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
/// The kernel frees and detaches asynchronously, so tests wait on conditions, never sleep.
public func eventually(timeout: Duration = .seconds(5), _ condition: () throws -> Bool) rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try condition() { return true }
        usleep(5_000)
    }
    return try condition()
}

/// Polls `condition` without blocking a thread of the concurrency pool (for
/// async tests, whose consumers need those threads to make progress).
public func eventually(timeout: Duration = .seconds(5), _ condition: () throws -> Bool) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return try condition()
}

/// Runs `body` with a new cgroup that is removed afterwards, even on failure.
public func withCgroup<R>(_ tag: String, _ body: (Cgroup) throws -> R) throws -> R {
    let cgroup = try Cgroup.create(uniqueName(tag))
    defer { try? cgroup.remove() }
    return try body(cgroup)
}

/// Runs `body` with a new, uniquely named cgroup that is removed afterwards.
public func withCgroup(_ tag: String, _ body: (Cgroup) async throws -> Void) async throws {
    let cgroup = try Cgroup.create(uniqueName(tag))
    defer { try? cgroup.remove() }
    try await body(cgroup)
}

/// Runs `body` with a new pin folder under /sys/fs/bpf that is removed afterwards.
public func withPinFolder<R>(_ body: (PinFolder) throws -> R) throws -> R {
    let folder = try PinFolder(instance: uniqueName("pin"))
    defer { try? folder.remove() }
    return try body(folder)
}

/// Runs `body` with a new pin folder under /sys/fs/bpf that is removed afterwards.
public func withPinFolder(_ body: (PinFolder) async throws -> Void) async throws {
    let folder = try PinFolder(instance: uniqueName("pin"))
    defer { try? folder.remove() }
    try await body(folder)
}

/// A network namespace of the test's own, with only loopback up; deleted afterwards.
public func withNetworkNamespace<R>(_ body: (String) throws -> R) throws -> R {
    let name = try createNetworkNamespace()
    defer { deleteNetworkNamespace(name) }
    return try body(name)
}

/// `withNetworkNamespace` for async tests.
public func withNetworkNamespace(_ body: (String) async throws -> Void) async throws {
    let name = try createNetworkNamespace()
    defer { deleteNetworkNamespace(name) }
    try await body(name)
}

private func createNetworkNamespace() throws -> String {
    let name = uniqueName("ns")
    try run(["ip", "netns", "add", name]).check()
    do {
        try run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]).check()
    } catch {
        deleteNetworkNamespace(name)
        throw error
    }
    return name
}

private func deleteNetworkNamespace(_ name: String) {
    _ = try? run(["ip", "netns", "delete", name])
}

/// Two "nodes": network namespaces joined by a veth pair (10.10.0.1 on node A,
/// 10.10.0.2 on node B), each routing `remoteRoutes` to the other. Neither has
/// a route out of the pair. Both are deleted afterwards.
public func withTwoNodes<R>(routesFromA: [String] = [], _ body: (_ nodeA: String, _ nodeB: String) throws -> R) throws -> R {
    try withNetworkNamespace { nodeA in
        try withNetworkNamespace { nodeB in
            let pair = uniqueName("v")
            let (endA, endB) = (String((pair + "a").suffix(15)), String((pair + "b").suffix(15)))
            try run(["ip", "link", "add", endA, "netns", nodeA, "type", "veth", "peer", "name", endB, "netns", nodeB]).check()
            try run(["ip", "netns", "exec", nodeA, "ip", "addr", "add", "10.10.0.1/24", "dev", endA]).check()
            try run(["ip", "netns", "exec", nodeB, "ip", "addr", "add", "10.10.0.2/24", "dev", endB]).check()
            try run(["ip", "netns", "exec", nodeA, "ip", "link", "set", endA, "up"]).check()
            try run(["ip", "netns", "exec", nodeB, "ip", "link", "set", endB, "up"]).check()
            for route in routesFromA {
                try run(["ip", "netns", "exec", nodeA, "ip", "route", "add", route, "via", "10.10.0.2"]).check()
            }
            return try body(nodeA, nodeB)
        }
    }
}
