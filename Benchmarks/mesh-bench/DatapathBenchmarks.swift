// The datapath's costs: what redirect + policy + load balancing add to
// connect(), load balancing among 10,000 services and 100,000 backends, and
// applying a 10,000-rule policy. Runs inside a network namespace of its own
// (`mesh-bench datapath` re-executes itself under `ip netns exec`), so a
// service address that failed to translate could never leave the machine.
import CBenchBaseline
import Foundation
import MeshKernel

/// A listener on 127.0.0.1 that accepts and closes connections on a thread.
func startAcceptLoop() -> UInt16 {
    let (listener, address) = loopbackListener(backlog: 4096)
    Thread {
        while true {
            let connection = accept(listener, nil, nil)
            if connection >= 0 { close(connection) }
        }
    }.start()
    return UInt16(bigEndian: address.sin_port)
}

/// A new TCP socket's `connect()` to the IPv4 `target`: 0, or -1 with errno set.
func connectNewSocket(_ fd: Int32, to target: Endpoint) -> Int32 {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = target.address.networkOrderWords.3
    address.sin_port = target.port.bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// Opens `count` TCP connections to `target` and keeps them: each holds its
/// reverse translation until the caller closes it.
func openConnections(to target: Endpoint, count: Int) -> [Int32] {
    (0..<count).map { _ in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { fatalError("socket() for a connection to \(target) failed: \(Errno(rawValue: errno))") }
        guard connectNewSocket(fd, to: target) == 0 else { fatalError("connect to \(target) failed: \(Errno(rawValue: errno))") }
        return fd
    }
}

/// Median nanoseconds of socket()+connect()+close() to `target`, over `count` connects.
func connectCost(to target: Endpoint, count: Int) -> Double {
    var samples: [Double] = []
    samples.reserveCapacity(count)
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let start = now()
        let status = connectNewSocket(fd, to: target)
        let elapsed = now() - start
        close(fd)
        guard status == 0 else { fatalError("connect to \(target) failed: \(Errno(rawValue: errno))") }
        samples.append(Double(elapsed))
    }
    return median(samples)
}

func datapathBenchmarks() throws {
    _ = bench_pin_to_cpu(0)
    guard (try? String(contentsOfFile: "/proc/self/net/dev", encoding: .utf8))?.split(separator: "\n").count == 3 else {
        fatalError("the datapath benchmark runs only inside its own network namespace (mesh-bench datapath starts one)")
    }
    let port = startAcceptLoop()
    let direct = Endpoint(.loopback, port: port)
    let plainGroup = try Cgroup.create("mesh-bench-plain-\(getpid())")
    let meshGroup = try Cgroup.create("mesh-bench-mesh-\(getpid())")
    let proxyGroup = try Cgroup.create("proxy", under: meshGroup)
    defer {
        try? plainGroup.remove()
        try? proxyGroup.remove()
        try? meshGroup.remove()
    }
    // A stand-in for the node proxy: a listener made in the proxy's cgroup (its accepted sockets stay there).
    let proxyPort = try inside(proxyGroup) { startAcceptLoop() }
    // Redirect + policy + load balancing on the mesh cgroup, with 10,000 services of 10 backends each.
    let redirect = try ProxyRedirect(attachingTo: meshGroup)
    let policy = try IdentityPolicy(attachingTo: meshGroup)
    let balancer = try ServiceLoadBalancer(attachingTo: meshGroup)
    defer { redirect.detach(); policy.detach(); balancer.detach() }
    let identity = Identity(labels: ["app": "bench"])
    try redirect.register(workload: meshGroup, tenant: 1, identity: identity.rawValue)
    try redirect.addRule(tenant: 1, destination: CIDR("10.200.0.0/16"), proxy: Endpoint(.loopback, port: 15001))
    try redirect.register(proxy: proxyGroup)
    try redirect.addRule(tenant: 1, destination: CIDR("10.201.0.0/16"), proxy: Endpoint(.loopback, port: proxyPort))
    let redirected = Endpoint(.v4(try IPv4Address("10.201.0.1")), port: 80)
    try policy.assign(identity, to: meshGroup)
    try policy.setPolicy(for: identity, rules: [.init(.deny, to: .cidr(try IPv4CIDR("10.250.0.0/16"))), .init(.allow, to: .any, ports: 1...65535, transport: .tcp)], defaultDeny: true)

    var start = now()
    for index in 0..<10_000 {
        let vip = Endpoint(.v4(IPv4Address(0x0A64_0000 + UInt32(index))), port: 80)
        let backends = (0..<10).map { ServiceLoadBalancer.Backend(Endpoint(.loopback, port: $0 == 0 ? port : UInt16(20_000 + $0))) }
        // One backend per service is the live listener; the others are never chosen below.
        try balancer.addService(vip, backends: [backends[0]] + (index == 0 ? [] : Array(backends.dropFirst())))
    }
    let populate = Double(now() - start) / 1e9
    print(String(format: "  10,000 services with 100,000 backend slots loaded in %.2f s (%.1f µs per service)", populate, populate * 1e6 / 10_000))
    let service = Endpoint(.v4(IPv4Address(0x0A64_0000)), port: 80)

    // Warm-up: caches, the kernel's socket and map allocators.
    _ = try inside(meshGroup) { connectCost(to: service, count: 70_000) }

    print("connect() to a loopback listener, one CPU (ns, median of 5,000 per round)")
    var plain: [Double] = [], meshDirect: [Double] = [], meshService: [Double] = [], meshRedirected: [Double] = []
    for _ in 0..<rounds {
        plain.append(try inside(plainGroup) { connectCost(to: direct, count: 5_000) })
        try inside(meshGroup) {
            meshDirect.append(connectCost(to: direct, count: 5_000))
            meshService.append(connectCost(to: service, count: 5_000))
            meshRedirected.append(connectCost(to: redirected, count: 5_000))
        }
    }
    report("no mesh programs", "ns", plain)
    report("redirect + policy + LB, not a service", "ns", meshDirect)
    report("redirect + policy + LB, to a service VIP", "ns", meshService)
    report("redirect + policy + LB, redirected to the proxy", "ns", meshRedirected)
    let added = zip(meshService, plain).map { $0 - $1 }
    print(String(format: "  => added to connect(): median %.0f ns (per round %@)  goal: <= 1000 ns",
                 median(added), added.map { String(format: "%.0f", $0) }.joined(separator: " ")))
    let addedRedirected = zip(meshRedirected, plain).map { $0 - $1 }
    print(String(format: "  => added to a redirected connect() (the proxy side's SYN and accept included): median %.0f ns (per round %@)",
                 median(addedRedirected), addedRedirected.map { String(format: "%.0f", $0) }.joined(separator: " ")))

    // The kernel's per-program accounting costs time itself (two clock reads
    // per run), so it is on only for separate passes like this one.
    let programs = [redirect.datapath.object, policy.datapath.object, balancer.datapath.object].flatMap(\.programs)
    func printRunStatistics(connects name: String, to target: Endpoint) throws {
        let statistics = try RunTimeStatistics.enable()
        defer { withExtendedLifetime(statistics) {} }
        var before: [String: ProgramRunStatistics] = [:]
        for program in programs { before[program.name] = try program.runStatistics() }
        _ = try inside(meshGroup) { connectCost(to: target, count: 5_000) }
        print("  kernel bpf_stats, connects \(name):")
        for program in programs {
            let now = try program.runStatistics(), then = before[program.name]!
            let runs = now.runs - then.runs, nanoseconds = now.nanoseconds - then.nanoseconds
            guard runs > 0 else { continue }
            print(String(format: "    %@ %.0f ns per run, %.1f runs per connect", program.name, Double(nanoseconds) / Double(runs), Double(runs) / 5_000))
        }
    }
    try printRunStatistics(connects: "to a service VIP", to: service)
    try printRunStatistics(connects: "redirected to the proxy", to: redirected)

    // A busy node: 10,000 balanced connections stay open, their socket cookies
    // spread over the reverse table's 65,536 slots (0 to 12 short connections,
    // pseudo-randomly, between two kept ones), so a new socket finds one of
    // its two slots taken about one time in 6.5, and both — it spills to the
    // hash — about one time in 40. The baseline runs with them open too.
    do {
        // 10,000 descriptors held: the soft limit (often 1,024) goes up to the hard one.
        var files = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
        }
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        let held = try inside(meshGroup) {
            (0..<10_000).flatMap { _ in
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                for fd in openConnections(to: direct, count: Int(seed >> 33) % 13) { close(fd) }
                return openConnections(to: service, count: 1)
            }
        }
        defer { for fd in held { close(fd) } }
        print("connect() with 10,000 balanced connections open (ns, median of 5,000 per round)")
        var plainBusy: [Double] = [], meshServiceBusy: [Double] = [], spilled: [Double] = []
        for _ in 0..<rounds {
            plainBusy.append(try inside(plainGroup) { connectCost(to: direct, count: 5_000) })
            let spilledBefore = try balancer.counters().reverseSpilled
            meshServiceBusy.append(try inside(meshGroup) { connectCost(to: service, count: 5_000) })
            spilled.append(Double(try balancer.counters().reverseSpilled - spilledBefore) / 5_000)
        }
        report("no mesh programs", "ns", plainBusy)
        report("redirect + policy + LB, to a service VIP", "ns", meshServiceBusy)
        let addedBusy = zip(meshServiceBusy, plainBusy).map { $0 - $1 }
        print(String(format: "  => added to connect(): median %.0f ns (per round %@); %.1f%% of these connects spilled to the hash",
                     median(addedBusy), addedBusy.map { String(format: "%.0f", $0) }.joined(separator: " "), median(spilled) * 100))
        try printRunStatistics(connects: "to a service VIP, 10,000 balanced connections open", to: service)
    }

    print("Applying a 10,000-rule policy (313 identities x 32 rules, one map update each)")
    var applyTimes: [Double] = []
    for round in 0..<rounds {
        start = now()
        var rules = 0
        for index in 0..<313 where rules < 10_000 {
            let owner = Identity(rawValue: 1_000 + UInt32(index))
            let set = (0..<min(32, 10_000 - rules)).map { rule in
                IdentityPolicy.Rule(rule % 2 == 0 ? .allow : .deny, to: .any, ports: UInt16(1_000 + rule)...UInt16(1_000 + rule + round), transport: .tcp)
            }
            try policy.setPolicy(for: owner, rules: set, defaultDeny: true)
            rules += set.count
        }
        applyTimes.append(Double(now() - start) / 1e6)
    }
    report("10,000 rules applied", "ms", applyTimes)
}

/// Runs a benchmark section in a fresh network namespace: re-executes this
/// binary as `mesh-bench <inner>` under `ip netns exec`.
func runInOwnNamespace(_ inner: String, _ arguments: [String] = []) throws {
    let namespace = "mesh-bench-\(getpid())"
    // `ip netns exec` gives the child a private mount namespace with a fresh
    // /sys, hiding the cgroup v2 mount: mount it again there (it vanishes with the child).
    let mount = "/tmp/mesh-bench-cgroup-\(getpid())"
    try ip(["netns", "add", namespace])
    defer { _ = try? ip(["netns", "delete", namespace]) }
    // Ended by a signal (a timeout, ^C), this process would leave the namespace and whatever runs in it
    // (the proxies, nginx, haproxy) behind: endNamespace ends them, then exits as the signal would have.
    let endings = [SIGINT, SIGTERM, SIGHUP].map { signalNumber in
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler { endNamespace(namespace, mount: mount, signal: signalNumber) }
        source.resume()
        return source
    }
    defer {
        endings.forEach { $0.cancel() }
        for signalNumber in [SIGINT, SIGTERM, SIGHUP] { signal(signalNumber, SIG_DFL) }
    }
    try ip(["netns", "exec", namespace, "ip", "link", "set", "lo", "up"])
    try ip(["netns", "exec", namespace, "sh", "-c",
            "mkdir -p \(mount) && mount -t cgroup2 none \(mount) && exec /proc/\(getpid())/exe \(([inner] + arguments).joined(separator: " ")); rmdir \(mount)"])
    rmdir(mount)
}

/// Runs `ip` with `arguments`, throwing if it failed; with `capturing`, returns
/// what it printed (else it prints to this process's output, as a section run under it does).
@discardableResult
private func ip(_ arguments: [String], capturing: Bool = false) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    process.arguments = arguments
    let output = capturing ? Pipe() : nil
    if let output { process.standardOutput = output }
    try process.run()
    let printed = output?.fileHandleForReading.readDataToEndOfFile() ?? Data()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw BenchmarkError(description: "ip \(arguments.joined(separator: " ")) failed") }
    return String(decoding: printed, as: UTF8.self)
}

/// Ends what runs in `namespace` and what the proxy benchmark made for it
/// (its shortcut cgroup, once the killed processes are reaped, and its scratch
/// folder), deletes the namespace and its cgroup mount point, and exits as
/// `signal` would have.
private func endNamespace(_ namespace: String, mount: String, signal signalNumber: Int32) -> Never {
    let running = ((try? ip(["netns", "pids", namespace], capturing: true)) ?? "").split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) }
    for pid in running { kill(pid, SIGKILL) }
    let deadline = Date().addingTimeInterval(10)
    for pid in running {
        try? FileManager.default.removeItem(at: proxyScratch(of: pid))
        guard let cgroup = try? shortcutCgroupParent().path + "/" + shortcutCgroupName(of: pid),
              FileManager.default.fileExists(atPath: cgroup) else { continue }
        // (An unreaped process still populates it.)
        while (try? Cgroup(path: cgroup).remove()) == nil && Date() < deadline { usleep(20_000) }
    }
    _ = try? ip(["netns", "delete", namespace])
    rmdir(mount)
    exit(128 + signalNumber)
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String
}
