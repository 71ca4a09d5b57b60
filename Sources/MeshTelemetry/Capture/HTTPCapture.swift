import MeshKernel
import Synchronization

/// Watches the TCP traffic of chosen workloads (cgroups) in the kernel and
/// delivers the calls that carry HTTP as ``SocketIOEvent``s.
///
/// Three programs on the socket layer's tracepoints see every send and
/// receive call after it returns (`tp_btf/sock_send_length`,
/// `tp_btf/sock_recv_length`) and every close (`tp_btf/inet_sock_set_state`).
/// A call of a watched workload copies up to 512 bytes from the buffer its
/// system call named only when those bytes start, or continue, an HTTP/1
/// message head; later calls of an HTTP connection report only their length
/// and last bytes, and connections that never looked like HTTP (TLS, binary
/// protocols) send nothing at all — they are only counted. Events are woken
/// in batches (when 256 KiB wait, or at the reader's poll interval).
///
/// HTTPS is seen in plaintext once ``watchTLS(library:)`` puts uprobes on
/// the TLS library's `SSL_read`/`SSL_write` (and their `_ex` forms); the
/// ciphertext calls of such connections are skipped.
///
/// Calls made through `sendfile`, `splice` or io_uring are counted by length
/// only. System call numbers are those of x86_64.
public final class HTTPCapture: Sendable {
    /// Counters kept in the kernel, summed over CPUs.
    public struct Counters: Sendable, Equatable {
        /// Send and receive calls of watched workloads on TCP sockets.
        public var callsWatched: UInt64
        /// Bytes those calls sent.
        public var bytesSent: UInt64
        /// Bytes those calls received.
        public var bytesReceived: UInt64
        /// Calls whose data was copied (message heads).
        public var callsCaptured: UInt64
        /// Calls of HTTP connections reported by length only (bodies).
        public var callsCounted: UInt64
        /// Calls of connections that never looked like HTTP: no event.
        public var callsIgnored: UInt64
        /// Events lost because the ring buffer was full.
        public var eventsLost: UInt64
        /// HTTP connections closed.
        public var closes: UInt64
        /// Calls whose buffer could not be found or read.
        public var unreadable: UInt64
        /// TLS library calls whose plaintext was reported.
        public var tlsCalls: UInt64
        /// TLS library calls whose socket was never seen (not reported).
        public var tlsUnmatched: UInt64
        /// Times a connection's state could not be stored (socket storage could not be
        /// allocated, or the HTTPS table refused it): a head split across calls may be missed.
        public var stateLost: UInt64
    }

    /// OpenSSL 3 as Debian installs it, which curl, Python and most servers use.
    public static let systemOpenSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

    let capture: HttpCaptureObject.Loaded
    /// The loaded object: its programs and maps, for run-time statistics and inspection.
    public var object: BPFObject { capture.object }
    private let links: [BPFLink]
    private let workloads: WatchedWorkloads
    private let tlsLinks = Mutex<[String: [BPFLink]]>([:])

    /// Loads and attaches the capture programs. Nothing is watched until
    /// ``watch(_:identity:)``.
    ///
    /// - Parameters:
    ///   - connectionCapacity: HTTPS connection ends tracked at once (least recently used go
    ///     first). Plain TCP connection ends keep their state in the socket itself (limited
    ///     only by socket memory; a state that cannot be stored is counted, ``Counters/stateLost``).
    ///   - ringBytes: the event ring's size, a power of two of at least a page.
    public init(connectionCapacity: Int = 65_536, ringBytes: Int = 8 << 20) throws(BPFError) {
        #if !arch(x86_64)
        throw BPFError(.notSupported, operation: "load HTTP capture", subject: "this architecture",
                       detail: "the capture programs decode x86_64 system call numbers")
        #else
        let skeleton = try HttpCaptureObject.open()
        try skeleton.maps.tlsConnections.setMaxEntries(connectionCapacity)
        try skeleton.maps.events.setMaxEntries(ringBytes)
        capture = try skeleton.load()
        workloads = WatchedWorkloads(capture)
        let programs = capture.programs
        links = [
            try programs.onSend.attachBTFTracepoint(),
            try programs.onReceive.attachBTFTracepoint(),
            try programs.onStateChange.attachBTFTracepoint(),
        ]
        #endif
    }

    /// Starts watching the TCP sockets of processes in `cgroup` (not its
    /// descendants); their events carry `identity`.
    public func watch(_ cgroup: Cgroup, identity: UInt32 = 0) throws(BPFError) {
        try workloads.insert(cgroup.id(), identity: identity)
    }

    /// Stops watching `cgroup`; false if it was not watched.
    @discardableResult
    public func unwatch(_ cgroup: Cgroup) throws(BPFError) -> Bool {
        try workloads.remove(cgroup.id())
    }

    /// The kernel's counters.
    public func counters() throws(BPFError) -> Counters {
        var sums = [UInt64](repeating: 0, count: Int(HttpCaptureObject.HttpCounter.counterCount.rawValue))
        for perCPU in try capture.maps.httpCounters.values(at: 0) {
            for (index, value) in perCPU.valuesElements.enumerated() where index < sums.count { sums[index] &+= value }
        }
        func value(_ counter: HttpCaptureObject.HttpCounter) -> UInt64 { sums[Int(counter.rawValue)] }
        return Counters(callsWatched: value(.callsWatched), bytesSent: value(.bytesSent), bytesReceived: value(.bytesReceived),
                        callsCaptured: value(.callsCaptured), callsCounted: value(.callsCounted), callsIgnored: value(.callsIgnored),
                        eventsLost: value(.eventsLost), closes: value(.closes), unreadable: value(.unreadable),
                        tlsCalls: value(.tlsCalls), tlsUnmatched: value(.tlsUnmatched), stateLost: value(.stateLost))
    }

    /// The events, as an `AsyncSequence`. There is one reader per capture.
    ///
    /// - Parameters:
    ///   - bufferCapacity: events held between the reader thread and the consumer.
    ///   - pollInterval: how long an event may wait when fewer than a batch arrive.
    public func events(bufferCapacity: Int = 65_536, pollInterval: Duration = .milliseconds(10)) throws(BPFError) -> RingBufferRecords<SocketIOEvent> {
        try capture.maps.events.records(bufferCapacity: bufferCapacity, pollInterval: pollInterval) { SocketIOEvent(record: $0) }
    }

    /// Sees HTTPS in plaintext for the processes that use `library` (an
    /// OpenSSL 1.1 or 3 `libssl`): uprobes on its `SSL_read`, `SSL_write`,
    /// `SSL_read_ex` and `SSL_write_ex`. Watching the same library again does nothing.
    public func watchTLS(library path: String = HTTPCapture.systemOpenSSL) throws(BPFError) {
        try tlsLinks.withLock { (attached) throws(BPFError) in
            guard attached[path] == nil else { return }
            try capture.globals.tlsWatched.set(1)
            let programs = capture.programs
            attached[path] = [
                try programs.sslWriteEntry.attachUprobe(binary: path, function: "SSL_write"),
                try programs.sslReturn.attachUprobe(binary: path, function: "SSL_write", returnProbe: true),
                try programs.sslReadEntry.attachUprobe(binary: path, function: "SSL_read"),
                try programs.sslReturn.attachUprobe(binary: path, function: "SSL_read", returnProbe: true),
                try programs.sslWriteExEntry.attachUprobe(binary: path, function: "SSL_write_ex"),
                try programs.sslExReturn.attachUprobe(binary: path, function: "SSL_write_ex", returnProbe: true),
                try programs.sslReadExEntry.attachUprobe(binary: path, function: "SSL_read_ex"),
                try programs.sslExReturn.attachUprobe(binary: path, function: "SSL_read_ex", returnProbe: true),
            ]
        }
    }

    /// Detaches the programs now (they also detach when this is released).
    public func detach() {
        for link in links { link.close() }
        tlsLinks.withLock { attached in
            for link in attached.values.joined() { link.close() }
            attached.removeAll()
        }
    }
}
