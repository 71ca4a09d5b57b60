// What the benchmarks read about processes: CPU time and resident memory.
import Foundation

/// A `/proc/PID/...` file as text ("" if it cannot be read).
private func procFile(_ pid: pid_t, _ name: String) -> String {
    (try? String(decoding: FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/\(pid)/\(name)")).readToEnd() ?? Data(), as: UTF8.self)) ?? ""
}

/// CPU seconds a process has used (`/proc/PID/stat` fields 14 and 15, user and system, in clock ticks).
func cpuSeconds(_ pid: pid_t) -> Double {
    let fields = procFile(pid, "stat").split(separator: ")").last?.split(separator: " ") ?? []
    guard fields.count > 13 else { return 0 }
    return ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// CPU seconds this process has used.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Resident memory of a process, in MiB (`VmRSS`).
func residentMiB(_ pid: pid_t) -> Double {
    let line = procFile(pid, "status").split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1_024
}

/// The direct children of a process (nginx's workers), from `/proc/*/stat`'s parent field.
private func children(of pid: pid_t) -> [pid_t] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(pid_t.init).filter { child in
        let fields = procFile(child, "stat").split(separator: ")").last?.split(separator: " ") ?? []
        return fields.count > 2 && pid_t(fields[1]) == pid
    }
}

/// CPU seconds of a process and its direct children.
func cpuSecondsWithChildren(_ pid: pid_t) -> Double {
    cpuSeconds(pid) + children(of: pid).map(cpuSeconds).reduce(0, +)
}

/// Resident memory of a process and its direct children, in MiB.
func residentMiBWithChildren(_ pid: pid_t) -> Double {
    residentMiB(pid) + children(of: pid).map(residentMiB).reduce(0, +)
}
