import Foundation

/// A thread of this process, as `/proc/self/task` shows it.
struct ProcessThread: Equatable {
    let id: Int32
    let niceness: Int32
}

/// The threads of this process named `name` (the proxy names a tenant's thread `mesh:` and the tenant).
func threads(named name: String) -> [ProcessThread] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { task -> ProcessThread? in
        guard let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
              comm.trimmingCharacters(in: .newlines) == name,
              let stat = try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After the name in parentheses: state is field 3, nice field 19.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 16, let id = Int32(task), let niceness = Int32(fields[16]) else { return nil }
        return ProcessThread(id: id, niceness: niceness)
    }
}
