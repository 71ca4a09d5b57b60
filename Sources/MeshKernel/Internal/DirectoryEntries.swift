#if canImport(Glibc)
import Glibc
#endif

/// The names in the directory at `path`, without `.` and `..`, sorted; with
/// `directoriesOnly`, those of its subdirectories only. Empty when the
/// directory cannot be read.
func directoryEntries(_ path: String, directoriesOnly: Bool = false) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        if directoriesOnly && entry.pointee.d_type != UInt8(DT_DIR) { continue }
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
