#if canImport(Glibc)
import Glibc
#endif

/// A cgroup v2 directory: the unit to which cgroup programs attach, and the
/// mesh's notion of a workload.
///
/// ```swift
/// let workload = try Cgroup.create("mesh-demo-client")
/// try workload.add(process: child)
/// let link = try sockOps.attach(to: workload)
/// ```
public struct Cgroup: Hashable, Sendable, CustomStringConvertible {
    /// The directory's absolute path.
    public let path: String

    /// Refers to an existing cgroup v2 directory.
    public init(path: String) { self.path = path }

    public var description: String { path }

    /// Where cgroup v2 is mounted, read from `/proc/mounts` (on a hybrid
    /// hierarchy it is not `/sys/fs/cgroup`).
    public static func v2MountPoint() throws(BPFError) -> String {
        guard let mounts = try? readFile("/proc/mounts") else {
            throw BPFError(.notMounted, operation: "find cgroup v2 mount", subject: "/proc/mounts", hint: "mount procfs: mount -t proc proc /proc")
        }
        for line in String(decoding: mounts, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count >= 3, fields[2] == "cgroup2" { return String(fields[1]) }
        }
        throw BPFError(.notMounted, operation: "find cgroup v2 mount", subject: "cgroup2",
                       hint: "mount cgroup v2: mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified")
    }

    /// The root of the cgroup v2 hierarchy.
    public static func root() throws(BPFError) -> Cgroup { Cgroup(path: try v2MountPoint()) }

    /// The cgroup v2 directory of a process (`0::/path` in `/proc/PID/cgroup`).
    public static func of(process pid: pid_t) throws(BPFError) -> Cgroup {
        let file = "/proc/\(pid)/cgroup"
        let text = String(decoding: try readFile(file), as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else {
            throw BPFError(.notFound, operation: "find cgroup of process", subject: "\(pid)", detail: "\(file) has no cgroup v2 line")
        }
        let relative = line.dropFirst(3)
        let mount = try v2MountPoint()
        return Cgroup(path: relative == "/" ? mount : mount + relative)
    }

    /// Creates a child directory `name` under `parent` (default: the v2 root).
    /// Fails with ``BPFError/Code/systemCall`` (`EEXIST`) if it exists.
    public static func create(_ name: String, under parent: Cgroup? = nil) throws(BPFError) -> Cgroup {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw BPFError(.invalidArgument, operation: "create cgroup", subject: name, detail: "a cgroup name is one path component")
        }
        let base: Cgroup
        if let parent { base = parent } else { base = try root() }
        let cgroup = Cgroup(path: base.path + "/" + name)
        guard mkdir(cgroup.path, 0o755) == 0 else { throw BPFError.system("create cgroup", cgroup.path, errno: .current) }
        return cgroup
    }

    /// The cgroup id: what `bpf_get_current_cgroup_id()` returns for its members.
    public func id() throws(BPFError) -> UInt64 {
        var status = stat()
        guard stat(path, &status) == 0 else { throw BPFError.system("read cgroup id", path, errno: .current) }
        return UInt64(status.st_ino)
    }

    /// Moves a process (all its threads) into this cgroup.
    public func add(process pid: pid_t) throws(BPFError) {
        try write("\(pid)\n", to: path + "/cgroup.procs", operation: "move process into cgroup")
    }

    /// Runs `body` with the calling process (all its threads) in this cgroup,
    /// then moves it back to the cgroup it was in, whether `body` threw or
    /// not. What `body` makes belongs to this cgroup for good: sockets keep
    /// the cgroup they were created in (a proxy's listeners, which
    /// ``ProxyRedirect/register(proxy:)`` requires there), and children stay.
    /// If the move back fails, that error is thrown, in place of any error of `body`.
    public func withCurrentProcess<T>(_ body: () throws -> T) throws -> T {
        let home = try Cgroup.of(process: getpid())
        try add(process: getpid())
        let result = Result { try body() }
        try home.add(process: getpid())
        return try result.get()
    }

    /// The same for an asynchronous `body`.
    public func withCurrentProcess<T>(_ body: () async throws -> T) async throws -> T {
        let home = try Cgroup.of(process: getpid())
        try add(process: getpid())
        let result: Result<T, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        try home.add(process: getpid())
        return try result.get()
    }

    /// The processes in this cgroup (not in its children).
    public func processes() throws(BPFError) -> [pid_t] {
        String(decoding: try readFile(path + "/cgroup.procs"), as: UTF8.self)
            .split(separator: "\n").compactMap { pid_t($0) }
    }

    /// Removes the directory after moving any remaining processes to the
    /// parent. Removing a cgroup that is already gone succeeds.
    ///
    /// A process that has just exited leaves its cgroup a moment after its
    /// exit, and the kernel refuses the removal (`EBUSY`) until then: that
    /// refusal is retried for up to 5 s. A refusal that cannot clear by
    /// itself — child cgroups, or a process that could not be moved — is
    /// thrown at once, with its cause.
    public func remove() throws(BPFError) {
        let parent = Cgroup(path: String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]))
        var unmoved: (pid: pid_t, error: BPFError)?
        if let members = try? processes() {
            for pid in members {
                // A process that exited meanwhile (ESRCH) needs no move: it leaves by itself.
                do throws(BPFError) { try parent.add(process: pid) } catch where error.errno != .noSuchProcess {
                    unmoved = unmoved ?? (pid, error)
                } catch {}
            }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while rmdir(path) != 0 {
            let error = Errno.current
            if error == .noSuchFileOrDirectory { return }
            let children = directoryEntries(path, directoriesOnly: true)
            let cause = !children.isEmpty ? "it has child cgroups: \(children.joined(separator: ", "))"
                : unmoved.map { "process \($0.pid) could not be moved out: \($0.error)" }
            guard error == .resourceBusy, cause == nil, ContinuousClock.now < deadline else {
                throw BPFError.system("remove cgroup", path, errno: error, detail: cause)
            }
            usleep(5_000)
        }
    }

    /// An `O_DIRECTORY` descriptor for attaching; the caller closes it.
    func openDirectory() throws(BPFError) -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BPFError.system("open cgroup", path, errno: .current) }
        return fd
    }
}

/// Writes a whole string to a (sysfs, cgroupfs, procfs) file.
func write(_ text: String, to file: String, operation: BPFError.Operation) throws(BPFError) {
    let fd = Glibc.open(file, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw BPFError.system(operation, file, errno: .current) }
    defer { closeDescriptor(fd) }
    let written = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    guard written == text.utf8.count else { throw BPFError.system(operation, file, errno: .current) }
}
