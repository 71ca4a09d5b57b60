// mesh-bench: MeshKernel against raw libbpf and plain loopback, in one run,
// with the variants interleaved round by round. Build in release:
//
//   swift build -c release --product mesh-bench && .build/release/mesh-bench
//
// Absolute numbers on a noisy 2-core VM mean little; the ratios are the result.
import CBenchBaseline
import Foundation
import MeshKernel

let rounds = 7

func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

func report(_ name: String, _ unit: String, _ values: [Double]) {
    print(String(format: "  %-46@ median %10.1f %@  (min %.1f, max %.1f)", name as NSString, median(values), unit, values.min()!, values.max()!))
}

func ratio(_ name: String, _ numerator: [Double], _ denominator: [Double], goal: String) {
    let ratios = zip(numerator, denominator).map { $0 / $1 }
    let (low, high) = medianInterval(ratios)
    print(String(format: "  => %-43@ median ratio %.3f, 95%% interval %.3f-%.3f (per-round %@)  goal: %@", name as NSString, median(ratios),
                 low, high, ratios.map { String(format: "%.2f", $0) }.joined(separator: " "), goal))
}

/// A 95% bootstrap interval of the median of `values`: the 2.5th and 97.5th
/// percentiles of the medians of 2,000 resamples, drawn by a fixed generator
/// (SplitMix64), so that one set of values always gives one interval.
func medianInterval(_ values: [Double]) -> (low: Double, high: Double) {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    let medians = (0..<2_000).map { _ in median(values.map { _ in values[Int(next() % UInt64(values.count))] }) }.sorted()
    return (medians[50], medians[1_949])
}

// MARK: Typed maps vs raw libbpf

func mapBenchmarks() throws {
    print("Typed map element operations vs the same libbpf calls from C (ns/op, 1,024 keys, 200,000 ops per round)")
    let map = try BPFMap.create(.hash, name: "bench_hash", keySize: 4, valueSize: 8, maxEntries: 1024)
    let typed = try HashMap<UInt32, UInt64>(map)
    let fd = try map.descriptor()
    let operations: UInt64 = 200_000
    for key in 0..<1024 as Range<UInt32> { try typed.insert(UInt64(key), for: key) }
    var cLookup: [Double] = [], swiftLookup: [Double] = [], cUpdate: [Double] = [], swiftUpdate: [Double] = []
    var sink: UInt64 = 0
    for _ in 0..<rounds {
        var start = now()
        sink &+= baseline_hash_lookups(fd, 1024, operations)
        cLookup.append(Double(now() - start) / Double(operations))

        start = now()
        for index in 0..<operations {
            if let value = try typed.lookup(UInt32(truncatingIfNeeded: index % 1024)) { sink &+= value & 1 }
        }
        swiftLookup.append(Double(now() - start) / Double(operations))

        start = now()
        sink &+= baseline_hash_updates(fd, 1024, operations)
        cUpdate.append(Double(now() - start) / Double(operations))

        start = now()
        for index in 0..<operations { try typed.insert(index, for: UInt32(truncatingIfNeeded: index % 1024)) }
        swiftUpdate.append(Double(now() - start) / Double(operations))
    }
    report("C bpf_map_lookup_elem", "ns", cLookup)
    report("Swift HashMap.lookup", "ns", swiftLookup)
    ratio("lookup Swift / C", swiftLookup, cLookup, goal: "<= 1.10")
    report("C bpf_map_update_elem", "ns", cUpdate)
    report("Swift HashMap.insert", "ns", swiftUpdate)
    ratio("update Swift / C", swiftUpdate, cUpdate, goal: "<= 1.10")
    if sink == 42 { print("") }

    print("Iteration and batch rates over 10,000 entries (entries/s)")
    let big = try HashMap<UInt32, UInt64>(BPFMap.create(.hash, name: "bench_big", keySize: 4, valueSize: 8, maxEntries: 10_000))
    try big.insert(contentsOf: (0..<10_000).map { (key: UInt32($0), value: UInt64($0)) })
    var walk: [Double] = [], batch: [Double] = [], batchUpdate: [Double] = []
    for _ in 0..<rounds {
        var start = now()
        let keys = try big.keys()
        walk.append(Double(keys.count) / (Double(now() - start) / 1e9))
        start = now()
        let entries = try big.entries(chunk: 1024)
        batch.append(Double(entries.count) / (Double(now() - start) / 1e9))
        start = now()
        let written = try big.insert(contentsOf: entries)
        batchUpdate.append(Double(written) / (Double(now() - start) / 1e9))
    }
    report("keys() via BPF_MAP_GET_NEXT_KEY", "/s", walk)
    report("entries() via BPF_MAP_LOOKUP_BATCH", "/s", batch)
    report("insert(contentsOf:) via BPF_MAP_UPDATE_BATCH", "/s", batchUpdate)
}

// MARK: Ring buffer drain

struct FloodRecord: BitwiseCopyable { var sequence: UInt64; var timestamp: UInt64; var cpu: UInt32; var size: UInt32 }
struct FloodArgs: BitwiseCopyable { var count: UInt32; var pad: UInt32 = 0 }

func ringBufferBenchmarks() async throws {
    let count: UInt32 = 1_000_000
    print("Ring buffer drain rate, \(count) records of 24 bytes per round (records/s)")
    let object = try BPFObject.open(.ringbufFlood)
    try object.load()
    let fill = try object.program("fill")
    let map = try object.map("flood")
    var cRates: [Double] = [], drainRates: [Double] = [], asyncRates: [Double] = []
    func produce() throws {
        var args = FloodArgs(count: count)
        try fill.testRun(context: &args)
    }
    for _ in 0..<rounds {
        try produce()
        var start = now()
        let drainedC = baseline_ringbuf_drain(try map.descriptor())
        cRates.append(Double(drainedC) / (Double(now() - start) / 1e9))

        try produce()
        let ring = try RingBuffer(map)
        start = now()
        var checksum: UInt64 = 0
        let drained = try ring.drain { checksum &+= UInt64($0.count) }
        drainRates.append(Double(drained) / (Double(now() - start) / 1e9))

        // AsyncSequence: records are already waiting; time until the consumer has them all.
        try produce()
        let records = try ring.records(as: FloodRecord.self)
        start = now()
        var received = 0
        for await record in records {
            checksum &+= record.sequence
            received += 1
            if received == Int(count) { break }
        }
        asyncRates.append(Double(received) / (Double(now() - start) / 1e9))
        if checksum == 1 { print("") }
    }
    report("C ring_buffer__consume, C callback", "/s", cRates)
    report("RingBuffer.drain (Swift closure)", "/s", drainRates)
    report("RingBuffer.records(as:) AsyncSequence", "/s", asyncRates)
    ratio("drain Swift / C", drainRates, cRates, goal: ">= 20 M/s absolute")
    ratio("AsyncSequence / C", asyncRates, cRates, goal: ">= 20 M/s absolute")
}

// MARK: Sockmap shortcut vs plain loopback

/// A TCP listener on 127.0.0.1 at a free port, and its address.
func loopbackListener(backlog: Int32) -> (fd: Int32, address: sockaddr_in) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var one: Int32 = 1
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, 4)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(listener, $0, length); _ = listen(listener, backlog); _ = getsockname(listener, $0, &length)
        }
    }
    return (listener, address)
}

func connectedPair() -> (Int32, Int32) {
    var (listener, address) = loopbackListener(backlog: 1)
    let length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = connect(client, $0, length) } }
    let server = accept(listener, nil, nil)
    close(listener)
    var one: Int32 = 1
    for fd in [client, server] { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4) }
    return (client, server)
}

func readExactly(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
    var offset = 0
    while offset < count {
        let got = read(fd, buffer + offset, count - offset)
        if got <= 0 { return false }
        offset += got
    }
    return true
}

func startEcho(_ fd: Int32) -> Thread {
    let thread = Thread {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        while readExactly(fd, buffer, 64) { _ = write(fd, buffer, 64) }
        buffer.deallocate()
    }
    thread.start()
    return thread
}

func roundTrips(_ fd: Int32, count: Int) -> [Double] {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    defer { buffer.deallocate() }
    memset(buffer, 0x42, 64)
    var samples: [Double] = []
    samples.reserveCapacity(count)
    for _ in 0..<count {
        let start = now()
        guard write(fd, buffer, 64) == 64, readExactly(fd, buffer, 64) else { fatalError("echo failed") }
        samples.append(Double(now() - start) / 1_000)
    }
    return samples
}

func socketBenchmarks() throws {
    // Client and echo thread share one CPU, as in the C prototypes of ENVIRONMENT.md:
    // across CPUs, every wake-up on this VM is an inter-processor interrupt that
    // costs more than the whole TCP path and hides what is being measured.
    _ = bench_pin_to_cpu(0)
    print("64-byte request/response over one TCP_NODELAY loopback connection, client and server on one CPU (µs per round trip, p50 of 20,000 per round)")
    let home = try Cgroup.of(process: getpid())
    let cgroup = try Cgroup.create("mesh-bench-\(getpid())")
    try cgroup.add(process: getpid())
    defer {
        try? home.add(process: getpid())
        try? cgroup.remove()
    }
    // Established before acceleration is attached: this pair uses the normal stack.
    let (plainClient, plainServer) = connectedPair()
    let acceleration = try SocketAcceleration(cgroup: cgroup)
    defer { acceleration.detach() }
    let (fastClient, fastServer) = connectedPair()
    let echoes = [startEcho(plainServer), startEcho(fastServer)]
    guard try acceleration.counters().socketsAdded == 2 else { fatalError("the accelerated pair is not in the sockhash") }
    _ = roundTrips(plainClient, count: 2_000)
    _ = roundTrips(fastClient, count: 2_000)
    var plain: [Double] = [], fast: [Double] = []
    for _ in 0..<rounds {
        plain.append(median(roundTrips(plainClient, count: 20_000)))
        fast.append(median(roundTrips(fastClient, count: 20_000)))
    }
    report("plain loopback", "µs", plain)
    report("sockops + sk_msg sockhash redirect", "µs", fast)
    ratio("accelerated / plain", fast, plain, goal: "<= 0.60")
    print("  datapath: \(try acceleration.counters())")
    for fd in [plainClient, fastClient] { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
    for fd in [plainServer, fastServer] { shutdown(fd, Int32(SHUT_RDWR)) }
    _ = echoes
}

// Children and `ip` need SIGCHLD; a parent may have blocked it.
var noSignals = sigset_t()
sigemptyset(&noSignals)
pthread_sigmask(SIG_SETMASK, &noSignals, nil)

// `mesh-bench maps|ringbuf|sockets|datapath|http|proxy` runs one section; no argument runs all.
// `mesh-bench http-server PORT` and `mesh-bench http-load PORT SECONDS` are the C server and
// fixed-rate client alone, for profiling a proxy between them (perf record -p); `mesh-bench wait-http PORT...`
// waits for HTTP listeners, and `mesh-bench proxy-config haproxy|nginx ...` prints the proxy benchmark's
// configuration of HAProxy or nginx (the benchmark scripts use both); `mesh-bench shortcut COMMAND...` runs
// a command with the sockmap shortcut on everything it starts.
let only = CommandLine.arguments.dropFirst().first
/// The tools, each run alone; they print only what they are asked for.
let tools: [String: () throws -> Void] = [
    "http-server": { runHTTPServer() }, "http-load": runHTTPLoad, "wait-http": runWaitHTTP, "proxy-config": runProxyConfig,
    "shortcut": runShortcut,
]
if let only, let tool = tools[only] {
    do { try tool() } catch {
        FileHandle.standardError.write(Data("mesh-bench: \(error)\n".utf8))
        exit(1)
    }
    exit(0)
}
print("mesh-bench: \(rounds) interleaved rounds per comparison, libbpf \(MeshKernel.libbpfVersion), kernel \(ProcessInfo.processInfo.operatingSystemVersionString)")
do {
    if only == nil || only == "maps" { try mapBenchmarks() }
    if only == nil || only == "ringbuf" { try await ringBufferBenchmarks() }
    if only == nil || only == "sockets" { try socketBenchmarks() }
    if only == nil || only == "datapath" { try runInOwnNamespace("datapath-inner") }
    if only == "datapath-inner" { try datapathBenchmarks() }
    if only == nil || only == "http" { try runInOwnNamespace("http-inner", Array(CommandLine.arguments.dropFirst(2))) }
    if only == "http-inner" { try httpBenchmarks() }
    if only == nil || only == "proxy" { try runInOwnNamespace("proxy-inner") }
    if only == "proxy-inner" { try proxyBenchmarks() }
} catch {
    FileHandle.standardError.write(Data("mesh-bench: \(error)\n".utf8))
    exit(1)
}
