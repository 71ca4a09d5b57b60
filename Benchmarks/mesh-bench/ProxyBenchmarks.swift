// What the per-node proxy costs (issue: MeshProxy): MeshProxy (the
// mesh-proxy program) side by side with HAProxy and nginx, as the one hop in
// L4 and in L7 mode, and as two L7 hops (the sidecar model), against the
// direct connection at a fixed request rate, variants interleaved; then the
// proxy's memory with 30 tenants, idle and under load. Runs in a network
// namespace of its own.
import CBenchBaseline
import Foundation
import MeshKernel
import Synchronization

/// Rounds per comparison: per-round ratios scatter by ±30% on this VM, so each ratio is printed with its median's 95% interval.
private let proxyRounds = 15
private let serverPort: UInt16 = 18_800

/// One way to reach the server: its port, the process whose CPU it costs,
/// and the cgroup the client's sockets are made in (where the sockmap
/// shortcut is attached), if any.
private struct Hop {
    let name: String
    let port: UInt16
    let process: Process?
    var cgroup: Cgroup? = nil
}

/// Runs every variant in turn, order alternating by round; prints latency,
/// mean and p99 latency added over the direct connection made in the same
/// cgroup (a variant without a process) and CPU per request, then each
/// MeshProxy variant's ratios to the other proxies.
private func compare(_ title: String, _ variants: [Hop]) throws {
    let durationMilliseconds = 2_000
    print("\(title): HTTP/1.1 at a fixed 10000 requests/s over 4 keep-alive connections, \(durationMilliseconds) ms per round, \(proxyRounds) rounds, C client and server")
    var means = Array(repeating: [Double](), count: variants.count)
    var p99s = Array(repeating: [Double](), count: variants.count)
    var cpu = Array(repeating: [Double](), count: variants.count)
    for round in 0..<proxyRounds {
        for index in (round % 2 == 0 ? Array(variants.indices) : variants.indices.reversed()) {
            let before = variants[index].process.map { cpuSecondsWithChildren($0.processIdentifier) } ?? 0
            let latencies = try inside(variants[index].cgroup) { try fixedRateLatencies(port: variants[index].port, milliseconds: durationMilliseconds) }
            let after = variants[index].process.map { cpuSecondsWithChildren($0.processIdentifier) } ?? 0
            let count = latencies.count
            let sorted = latencies.sorted()
            means[index].append(sorted.reduce(0, +) / Double(sorted.count))
            p99s[index].append(percentile(sorted, 0.99))
            cpu[index].append((after - before) / Double(count) * 1e6)
        }
    }
    var added: [[Double]] = [], addedP99: [[Double]] = []
    for (index, variant) in variants.enumerated() {
        report("mean latency, \(variant.name)", "µs", means[index])
        report("p99 latency, \(variant.name)", "µs", p99s[index])
        let baseline = variants.firstIndex { $0.process == nil && $0.cgroup?.path == variant.cgroup?.path } ?? 0
        added.append(zip(means[index], means[baseline]).map { $0 - $1 })
        addedP99.append(zip(p99s[index], p99s[baseline]).map { $0 - $1 })
        if variant.process != nil {
            report("mean latency added over \(variants[baseline].name), \(variant.name)", "µs", added[index])
            report("p99 latency added over \(variants[baseline].name), \(variant.name)", "µs", addedP99[index])
            report("proxy CPU per request, \(variant.name)", "µs", cpu[index])
        }
    }
    let proxies = variants.indices.filter { variants[$0].process != nil }
    let ours = proxies.filter { variants[$0].name.hasPrefix("MeshProxy") }
    for mine in ours {
        // A MeshProxy without the shortcut is compared with the others without it only.
        for other in proxies where !ours.contains(other) && (variants[other].cgroup == nil || variants[mine].cgroup != nil) {
            ratio("latency added, \(variants[mine].name) / \(variants[other].name)", added[mine], added[other], goal: "<= 1.00")
            ratio("p99 latency added, \(variants[mine].name) / \(variants[other].name)", addedP99[mine], addedP99[other], goal: "<= 1.00")
            ratio("CPU per request, \(variants[mine].name) / \(variants[other].name)", cpu[mine], cpu[other], goal: "<= 1.00")
        }
    }
}

func proxyBenchmarks() throws {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    // `make bench` names the deployment build (the Swift runtime linked in); else the one beside this program.
    let meshProxyPath = ProcessInfo.processInfo.environment["MESH_PROXY_PROGRAM"] ?? directory.appendingPathComponent("mesh-proxy").path
    guard FileManager.default.isExecutableFile(atPath: meshProxyPath) else {
        throw BenchmarkError(description: "\(meshProxyPath) is missing: build it in release too (make bench does)")
    }
    guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") else {
        throw BenchmarkError(description: "nginx is missing: `bash scripts/setup.sh bench` installs it (make bench does)")
    }
    let server = try start("/proc/self/exe", ["http-server", String(serverPort)])
    defer { server.stop() }
    try waitForHTTPServer(serverPort)
    let upstream = "127.0.0.1:\(serverPort)"

    // MeshProxy: one process for L4, one for L7, each with a second tenant in front of the first for two hops.
    let meshL4 = try start(meshProxyPath, ["--tenant", "l4=127.0.0.1:18801,upstream=\(upstream)",
                                           "--tenant", "front4=127.0.0.1:18841,upstream=127.0.0.1:18801"])
    defer { meshL4.stop() }
    let meshL7 = try start(meshProxyPath, ["--tenant", "l7=127.0.0.1:18811,upstream=\(upstream),mode=http",
                                           "--tenant", "front=127.0.0.1:18821,upstream=127.0.0.1:18811,mode=http"])
    defer { meshL7.stop() }
    // The same two hops with the two tenants sharing one event loop instead of a thread each.
    let meshShared = try start(meshProxyPath, ["--threads", "1", "--tenant", "l7=127.0.0.1:18831,upstream=\(upstream),mode=http",
                                               "--tenant", "front=127.0.0.1:18832,upstream=127.0.0.1:18831,mode=http"])
    defer { meshShared.stop() }
    // And the two L4 hops so (a process of their own: the L7 variant's event loop carries only its own tenants).
    let meshSharedL4 = try start(meshProxyPath, ["--threads", "1", "--tenant", "l4=127.0.0.1:18833,upstream=\(upstream)",
                                                 "--tenant", "front4=127.0.0.1:18834,upstream=127.0.0.1:18833"])
    defer { meshSharedL4.stop() }

    let scratch = proxyScratch(of: getpid())
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: scratch) }
    // HAProxy 2.6, as a user configures it for each mode.
    let haproxyConfiguration = scratch.appendingPathComponent("haproxy.cfg")
    try haproxyListeners(l4: 18_802, l7: 18_812, front: 18_822, l4Front: 18_842, upstream: upstream)
        .write(to: haproxyConfiguration, atomically: true, encoding: .utf8)
    let haproxy = try start("/usr/sbin/haproxy", ["-db", "-f", haproxyConfiguration.path])
    defer { haproxy.stop() }
    // nginx 1.22, likewise (nginxListeners).
    let nginxConfiguration = scratch.appendingPathComponent("nginx.conf")
    try nginxListeners(l4: 18_803, l7: 18_813, front: 18_823, l4Front: 18_843, upstream: upstream, scratch: scratch.path)
        .write(to: nginxConfiguration, atomically: true, encoding: .utf8)
    let nginx = try start("/usr/sbin/nginx", ["-c", nginxConfiguration.path, "-e", "stderr"])
    defer { nginx.stop() }

    // The sockmap shortcut on the proxy's local legs: SocketAcceleration on a cgroup that holds the
    // client's sockets of these variants (the client runs inside it for their rounds), a server of its
    // own, and a MeshProxy — and, for comparison, an HAProxy — started inside it.
    let shortcutGroup = try Cgroup.create(shortcutCgroupName(of: getpid()), under: try shortcutCgroupParent())
    defer { try? shortcutGroup.remove() }
    let acceleration = try SocketAcceleration(cgroup: shortcutGroup)
    defer { acceleration.detach() }
    let shortcutUpstream = "127.0.0.1:18804"
    let haproxyShortcutConfiguration = scratch.appendingPathComponent("haproxy-shortcut.cfg")
    try haproxyListeners(l4: 18_807, l7: 18_817, front: nil, upstream: shortcutUpstream)
        .write(to: haproxyShortcutConfiguration, atomically: true, encoding: .utf8)
    let shortcutServer = try inside(shortcutGroup) { try start("/proc/self/exe", ["http-server", "18804"]) }
    defer { shortcutServer.stop() }
    let meshShortcut = try inside(shortcutGroup) {
        try start(meshProxyPath, ["--tenant", "l4=127.0.0.1:18806,upstream=\(shortcutUpstream)",
                                  "--tenant", "l7=127.0.0.1:18816,upstream=\(shortcutUpstream),mode=http"])
    }
    defer { meshShortcut.stop() }
    let haproxyShortcut = try inside(shortcutGroup) { try start("/usr/sbin/haproxy", ["-db", "-f", haproxyShortcutConfiguration.path]) }
    defer { haproxyShortcut.stop() }
    for port: UInt16 in [18_801, 18_811, 18_821, 18_831, 18_832, 18_833, 18_834, 18_841, 18_802, 18_812, 18_822, 18_842, 18_803, 18_813, 18_823, 18_843,
                         18_804, 18_806, 18_816, 18_807, 18_817] {
        try waitForHTTPServer(port)
    }

    let direct = Hop(name: "direct", port: serverPort, process: nil)
    let directShortcut = Hop(name: "direct + sockmap shortcut", port: 18_804, process: nil, cgroup: shortcutGroup)
    try compare("L4 proxy as the one hop", [direct, Hop(name: "MeshProxy (L4)", port: 18_801, process: meshL4),
                                            Hop(name: "HAProxy 2.6 (tcp)", port: 18_802, process: haproxy),
                                            Hop(name: "nginx 1.22 (stream)", port: 18_803, process: nginx),
                                            directShortcut,
                                            Hop(name: "MeshProxy (L4) + sockmap shortcut", port: 18_806, process: meshShortcut, cgroup: shortcutGroup),
                                            Hop(name: "HAProxy 2.6 (tcp) + sockmap shortcut", port: 18_807, process: haproxyShortcut, cgroup: shortcutGroup)])
    try compare("L7 proxy as the one hop", [direct, Hop(name: "MeshProxy (HTTP)", port: 18_811, process: meshL7),
                                            Hop(name: "HAProxy 2.6 (http)", port: 18_812, process: haproxy),
                                            Hop(name: "nginx 1.22 (http)", port: 18_813, process: nginx),
                                            directShortcut,
                                            Hop(name: "MeshProxy (HTTP) + sockmap shortcut", port: 18_816, process: meshShortcut, cgroup: shortcutGroup),
                                            Hop(name: "HAProxy 2.6 (http) + sockmap shortcut", port: 18_817, process: haproxyShortcut, cgroup: shortcutGroup)])
    print("  sockmap shortcut: \(try acceleration.counters())")
    try compare("Two L7 hops (the sidecar model)", [direct, Hop(name: "MeshProxy x2", port: 18_821, process: meshL7),
                                                    Hop(name: "MeshProxy x2, one event loop (--threads 1)", port: 18_832, process: meshShared),
                                                    Hop(name: "HAProxy x2", port: 18_822, process: haproxy),
                                                    Hop(name: "nginx x2", port: 18_823, process: nginx)])
    try compare("Two L4 hops (the sidecar model)", [direct, Hop(name: "MeshProxy x2 (L4)", port: 18_841, process: meshL4),
                                                    Hop(name: "MeshProxy x2 (L4), one event loop (--threads 1)", port: 18_834, process: meshSharedL4),
                                                    Hop(name: "HAProxy x2 (tcp)", port: 18_842, process: haproxy),
                                                    Hop(name: "nginx x2 (stream)", port: 18_843, process: nginx)])

    try residentMemory(meshProxyPath, upstream: upstream, http: true)
    try residentMemory(meshProxyPath, upstream: upstream, http: false)
}

/// Memory of `mesh-proxy` with 30 tenants in HTTP mode (or L4), idle, then with each carrying
/// load in turn, then during load through all of them at once; and with one tenant, idle.
private func residentMemory(_ meshProxyPath: String, upstream: String, http: Bool) throws {
    let mode = http ? ",mode=http" : "", firstPort = http ? 18_900 : 18_950, onePort: UInt16 = http ? 18_999 : 18_998
    let ports = (0..<30).map { UInt16(firstPort + $0) }
    let thirty = try start(meshProxyPath, ports.enumerated().flatMap { ["--tenant", "t\($0.offset)=127.0.0.1:\($0.element),upstream=\(upstream)\(mode)"] })
    defer { thirty.stop() }
    let single = try start(meshProxyPath, ["--tenant", "one=127.0.0.1:\(onePort),upstream=\(upstream)\(mode)"])
    defer { single.stop() }
    try waitForHTTPServer(ports.last!)
    try waitForHTTPServer(onePort)
    let one = residentMiB(single.processIdentifier), idle = residentMiB(thirty.processIdentifier)
    // A failed run would leave "after load" measured without load: it throws.
    for port in ports { _ = try fixedRateLatencies(port: port, milliseconds: 200) }
    let loaded = residentMiB(thirty.processIdentifier)
    let during = try residentMiBDuringLoad(of: thirty.processIdentifier, ports: ports, totalRate: 10_000)
    print("  MeshProxy resident memory (\(http ? "HTTP" : "L4") mode): " + String(format: "1 tenant idle %.1f MiB; 30 tenants idle %.1f MiB (%.2f MiB per additional tenant), after 10,000 requests/s through each %.1f MiB, during 10,000 requests/s through all 30 at once %.1f MiB  goal: <= 32 MiB, <= 0.5 MiB per tenant",
                 one, idle, (idle - one) / 29, loaded, during))
}

/// The resident memory of process `pid`, in MiB, sampled halfway through a
/// 2-second fixed-rate load through every one of `ports` at once (one
/// connection each, `totalRate` requests a second among them). Throws if any
/// port's load failed.
private func residentMiBDuringLoad(of pid: pid_t, ports: [UInt16], totalRate: Int) throws -> Double {
    let failures = Mutex<[String]>([]), done = DispatchGroup()
    for port in ports {
        done.enter()
        Thread {
            defer { done.leave() }
            do { _ = try fixedRateLatencies(port: port, milliseconds: 2_000, rate: totalRate / ports.count, connections: 1) }
            catch { failures.withLock { $0.append("\(error)") } }
        }.start()
    }
    usleep(1_000_000)   // halfway: a measuring point, not a wait for a condition
    let resident = residentMiB(pid)
    done.wait()
    if let failure = failures.withLock({ $0.first }) { throw BenchmarkError(description: "load through all tenants at once: \(failure)") }
    return resident
}

/// The proxy benchmark's scratch folder (configurations, nginx's files) in process `pid`.
func proxyScratch(of pid: pid_t) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("mesh-bench-proxies-\(pid)")
}

/// The name of the proxy benchmark's shortcut cgroup in process `pid`.
func shortcutCgroupName(of pid: pid_t) -> String { "mesh-bench-shortcut-\(pid)" }

/// Where the shortcut cgroup goes: beside this process's own cgroup, so that it
/// shares whatever controllers that one has (or under the root, for a process in it).
func shortcutCgroupParent() throws -> Cgroup {
    let home = try Cgroup.of(process: getpid()), root = try Cgroup.root()
    return home.path == root.path ? root : Cgroup(path: (home.path as NSString).deletingLastPathComponent)
}

/// A certificate chain and its key (PEM files) that a proxy's L7 listener terminates TLS with.
struct ListenerCertificate {
    let chain: String
    let key: String
}

/// HAProxy 2.6's configuration as a user writes it: an L4 and an L7 listener
/// in front of `upstream`, and optionally a second L7 hop in front of the first
/// (`front`) and a second L4 hop in front of the first (`l4Front`).
/// With `tls`, the L7 listener terminates TLS (HAProxy finds the key in the file
/// of the chain's name with `.key` added, which `tls.key` must be).
func haproxyListeners(l4: UInt16, l7: UInt16, front: UInt16?, l4Front: UInt16? = nil, upstream: String, tls: ListenerCertificate? = nil) -> String {
    var configuration = """
        global
            maxconn 4096
        defaults
            timeout connect 5s
            timeout client 60s
            timeout server 60s
        listen l4
            mode tcp
            bind 127.0.0.1:\(l4)
            server upstream \(upstream)
        listen l7
            mode http
            option http-keep-alive
            http-reuse always
            bind 127.0.0.1:\(l7)\(tls.map { " ssl crt \($0.chain)" } ?? "")
            server upstream \(upstream)

        """
    if let front {
        configuration += """
            listen front
                mode http
                option http-keep-alive
                http-reuse always
                bind 127.0.0.1:\(front)
                server l7 127.0.0.1:\(l7)

            """
    }
    if let l4Front {
        configuration += """
            listen l4front
                mode tcp
                bind 127.0.0.1:\(l4Front)
                server l4 127.0.0.1:\(l4)

            """
    }
    return configuration
}

/// nginx 1.22 as a user configures it for each mode: stream on `l4`, http with upstream keep-alive on `l7`
/// (and no cap on requests per connection, whose default of 1000 would close the benchmark's connections),
/// and with `front`, a second http hop in front of `l7`, with `l4Front`, a second stream hop in front of `l4`; with `tls`, `l7` terminates TLS (1.3, which
/// nginx 1.22 does not enable by default). Its pid and
/// temporary files go in `scratch`.
func nginxListeners(l4: UInt16, l7: UInt16, front: UInt16?, l4Front: UInt16? = nil, upstream: String, scratch: String,
                    tls: ListenerCertificate? = nil) -> String {
    let frontServer = front.map { """
                upstream l7 { server 127.0.0.1:\(l7); keepalive 32; keepalive_requests 1000000; }
                server {
                    listen 127.0.0.1:\($0);
                    location / { proxy_pass http://l7; proxy_http_version 1.1; proxy_set_header Connection ""; }
                }
        """ } ?? ""
    return """
        load_module /usr/lib/nginx/modules/ngx_stream_module.so;
        daemon off;
        worker_processes auto;
        pid \(scratch)/nginx.pid;
        error_log stderr crit;
        events { worker_connections 4096; }
        stream {
            server { listen 127.0.0.1:\(l4); proxy_pass \(upstream); }
        \(l4Front.map { "    server { listen 127.0.0.1:\($0); proxy_pass 127.0.0.1:\(l4); }" } ?? "")
        }
        http {
            access_log off;
            keepalive_requests 1000000;
            client_body_temp_path \(scratch)/body;
            proxy_temp_path \(scratch)/proxy;
            upstream server { server \(upstream); keepalive 32; keepalive_requests 1000000; }
            server {
                listen 127.0.0.1:\(l7)\(tls == nil ? "" : " ssl");\(tls.map { " ssl_certificate \($0.chain); ssl_certificate_key \($0.key); ssl_protocols TLSv1.3;" } ?? "")
                location / { proxy_pass http://server; proxy_http_version 1.1; proxy_set_header Connection ""; }
            }
        \(frontServer)
        }

        """
}

/// `mesh-bench shortcut COMMAND...`: runs COMMAND (and so everything it starts) in a cgroup of its own
/// with the sockmap shortcut attached, as the proxy benchmark's shortcut variants run, then detaches the
/// shortcut and removes the cgroup; fails (exit 1) when COMMAND does. (Interrupted, it leaves both behind: end
/// COMMAND instead, or remove the cgroup, `mesh-bench-shortcut-PID`, by hand.) For scripts that compare proxies with the
/// shortcut on all of them (`mesh-bench shortcut bash Benchmarks/proxy-cpu-loop.sh ...`).
func runShortcut() throws {
    let command = Array(CommandLine.arguments.dropFirst(2))
    guard let program = command.first else { throw BenchmarkError(description: "usage: mesh-bench shortcut COMMAND...") }
    let group = try Cgroup.create(shortcutCgroupName(of: getpid()), under: try shortcutCgroupParent())
    defer { try? group.remove() }
    let acceleration = try SocketAcceleration(cgroup: group)
    defer { acceleration.detach() }
    let child = try inside(group) { try start("/usr/bin/env", [program] + command.dropFirst(), quiet: false) }
    child.waitUntilExit()
    FileHandle.standardError.write(Data("mesh-bench shortcut: \(try acceleration.counters())\n".utf8))
    if child.terminationStatus != 0 { throw BenchmarkError(description: "\(program) exited with status \(child.terminationStatus)") }
}

/// `mesh-bench proxy-config haproxy|nginx L4PORT L7PORT UPSTREAM SCRATCH [CHAIN KEY]`: the configuration the
/// proxy benchmark gives HAProxy or nginx (one hop, both modes), for scripts that run them the same way;
/// with CHAIN and KEY (PEM files; HAProxy's key must be CHAIN.key), the L7 listener terminates TLS.
func runProxyConfig() throws {
    let arguments = Array(CommandLine.arguments.dropFirst(2))
    let usage = BenchmarkError(description: "usage: mesh-bench proxy-config haproxy|nginx L4PORT L7PORT UPSTREAM SCRATCH [CHAIN KEY]")
    guard arguments.count == 5 || arguments.count == 7, let l4 = UInt16(arguments[1]), let l7 = UInt16(arguments[2]) else { throw usage }
    let tls = arguments.count == 7 ? ListenerCertificate(chain: arguments[5], key: arguments[6]) : nil
    switch arguments[0] {
    case "haproxy":
        if let tls, tls.key != tls.chain + ".key" { throw BenchmarkError(description: "HAProxy reads the key from \(tls.chain).key, not \(tls.key)") }
        print(haproxyListeners(l4: l4, l7: l7, front: nil, upstream: arguments[3], tls: tls), terminator: "")
    case "nginx": print(nginxListeners(l4: l4, l7: l7, front: nil, upstream: arguments[3], scratch: arguments[4], tls: tls), terminator: "")
    default: throw usage
    }
}
