import CBPFShim

/// How often a program ran and for how long, as the kernel counts it while
/// run-time statistics are on (``RunTimeStatistics/enable()``).
public struct ProgramRunStatistics: Sendable, Equatable {
    /// Runs counted.
    public var runs: UInt64
    /// Total time in the program, in nanoseconds.
    public var nanoseconds: UInt64

    /// Mean nanoseconds per run, or 0 before the first run.
    public var nanosecondsPerRun: Double { runs == 0 ? 0 : Double(nanoseconds) / Double(runs) }
}

extension BPFProgram {
    /// The kernel's run count and run time for this program (`bpf_prog_info`).
    public func runStatistics() throws(BPFError) -> ProgramRunStatistics {
        let fd = try descriptor()
        guard let info = kernelInfo(of: fd, as: bpf_prog_info.self, zero: bpf_prog_info()) else {
            throw BPFError.system("read program statistics", description, errno: .current)
        }
        return ProgramRunStatistics(runs: info.run_cnt, nanoseconds: info.run_time_ns)
    }
}

/// The kernel's per-program run-time accounting (`BPF_ENABLE_STATS`): on while
/// a value of this type is alive, off again when the last one is released.
public final class RunTimeStatistics: Sendable {
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    /// Turns run-time statistics on for every program until the result is released.
    public static func enable() throws(BPFError) -> RunTimeStatistics {
        RunTimeStatistics(fd: try LibBPF.check("enable run-time statistics", nil) { bpf_enable_stats(BPF_STATS_RUN_TIME) })
    }

    deinit { closeDescriptor(fd) }
}
