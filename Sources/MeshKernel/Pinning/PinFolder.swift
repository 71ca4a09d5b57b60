import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// What to do when a pin already exists where a map would be pinned.
public enum PinPolicy: Sendable {
    /// Reuse the pinned map if its type, key size, value size, max entries
    /// and flags match the object's definition; otherwise fail with
    /// ``BPFError/Code/pinIncompatible`` naming the field.
    case reuseIfCompatible
    /// Remove the existing pin and pin a new map in its place.
    case replace
    /// Fail with ``BPFError/Code/pinExists``.
    case fail
}

/// The bpffs folder of one mesh instance, `/sys/fs/bpf/<instance>/`, where
/// its maps and links are pinned so `bpftool map dump pinned ...` finds them.
public struct PinFolder: Hashable, Sendable, CustomStringConvertible {
    /// The folder's absolute path.
    public let path: String

    /// Opens (creating if needed) the folder of `instance` under `root`, a
    /// bpffs mount. Fails with ``BPFError/Code/notMounted`` if `root` is not bpffs.
    public init(instance: String, root: String = "/sys/fs/bpf") throws(BPFError) {
        guard !instance.isEmpty, !instance.contains("/"), instance != ".", instance != ".." else {
            throw BPFError(.invalidArgument, operation: "open pin folder", subject: instance, detail: "an instance name is one path component")
        }
        guard SystemCheck.isBPFFS(root) else {
            throw BPFError(.notMounted, operation: "open pin folder", subject: root,
                           hint: "mount bpffs: mount -t bpf bpf \(root)")
        }
        path = root + "/" + instance
        if mkdir(path, 0o700) != 0, Glibc.errno != EEXIST {
            throw BPFError.system("create pin folder", path, errno: .current)
        }
    }

    /// Opens the folder at the absolute `path` on bpffs, which must exist
    /// already — the folder of another process's instance, such as the agent
    /// whose pins a proxy reads: a folder not made yet is an error, not an
    /// empty folder. (Its pins are that process's: ``remove()`` is its to call.)
    /// Fails with ``BPFError/Code/notFound`` if there is none (or it is not a
    /// folder), ``BPFError/Code/notMounted`` if it is not on bpffs, and with
    /// the system's error if it cannot be looked at (such as `EACCES`).
    public init(existingAt path: String) throws(BPFError) {
        var path = path
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        guard path.hasPrefix("/") else {
            throw BPFError(.invalidArgument, operation: "open pin folder", subject: path, detail: "a pin folder's path is absolute")
        }
        var status = stat()
        let found = stat(path, &status) == 0
        if !found, Glibc.errno != ENOENT { throw BPFError.system("open pin folder", path, errno: .current) }
        guard found, status.st_mode & S_IFMT == S_IFDIR else {
            throw BPFError(.notFound, operation: "open pin folder", subject: path,
                           hint: "start the agent that pins there first, or name its folder (such as /sys/fs/bpf/mesh)",
                           detail: found ? "not a folder" : nil)
        }
        guard SystemCheck.isBPFFS(path) else {
            throw BPFError(.notMounted, operation: "open pin folder", subject: path, hint: "pins live on bpffs: a folder under /sys/fs/bpf")
        }
        self.path = path
    }

    public var description: String { path }

    /// The path of the pin called `name` in this folder.
    public func path(for name: String) -> String { path + "/" + name }

    /// The names pinned in this folder.
    public func pins() -> [String] { directoryEntries(path) }

    /// Makes room for a pin called `name` where one may already be: removes
    /// it when `replacing`, else fails with ``BPFError/Code/pinExists``
    /// naming `subject` (and `hint`, another way out, after removing it).
    /// Returns the pin's path.
    @discardableResult
    func makeRoom(for name: String, subject: String, replacing: Bool, hint: String) throws(BPFError) -> String {
        let path = path(for: name)
        var status = stat()
        guard lstat(path, &status) == 0 else { return path }
        guard replacing else {
            throw BPFError(.pinExists, operation: "pin", subject: "\(subject) at \(path)", hint: "remove it (rm \(path)) \(hint)")
        }
        if unlink(path) != 0, Glibc.errno != ENOENT { throw BPFError.system("replace pin", path, errno: .current) }
        return path
    }

    /// Removes every pin in the folder and the folder itself. The kernel
    /// frees each map or link once nothing else holds it.
    public func remove() throws(BPFError) {
        for name in pins() where unlink(path(for: name)) != 0 && Glibc.errno != ENOENT {
            throw BPFError.system("remove pin", path(for: name), errno: .current)
        }
        if rmdir(path) != 0, Glibc.errno != ENOENT {
            throw BPFError.system("remove pin folder", path, errno: .current)
        }
    }
}

extension BPFObject {
    /// Pins maps of this object in `folder` when it loads, applying `policy`
    /// to pins that already exist; call before ``load()``.
    ///
    /// - Parameters:
    ///   - names: the maps to pin; nil pins every map except the
    ///     global-variable maps (`.rodata`, `.data`, `.bss`, `.kconfig`).
    ///   - folder: the mesh instance's pin folder.
    ///   - policy: what to do with a pin that already exists.
    public func pinMaps(_ names: [String]? = nil, in folder: PinFolder, policy: PinPolicy) throws(BPFError) {
        let selected = try names.map { (names) throws(BPFError) in try names.map { (name) throws(BPFError) in try map(name) } }
            ?? maps.filter { !$0.name.contains(".") }
        for map in selected {
            let path = folder.path(for: map.name)
            if policy == .reuseIfCompatible, let existing = try? BPFMap.open(pinned: path) {
                try checkCompatible(existing, with: map, at: path)
            } else {
                try folder.makeRoom(for: map.name, subject: "\(map)", replacing: policy == .replace, hint: "or load with policy .replace or .reuseIfCompatible")
            }
            try map.setPinPath(path)
        }
    }

    private func checkCompatible(_ pinned: BPFMap, with map: BPFMap, at path: String) throws(BPFError) {
        let fields: [(String, String, String)] = [
            ("type", "\(pinned.type)", "\(map.type)"),
            ("key size", "\(pinned.keySize)", "\(map.keySize)"),
            ("value size", "\(pinned.valueSize)", "\(map.valueSize)"),
            ("max entries", "\(pinned.maxEntries)", "\(map.maxEntries)"),
            ("flags", "\(pinned.flags.rawValue)", "\(map.flags.rawValue)"),
        ]
        let different = fields.filter { $0.1 != $0.2 }
        guard different.isEmpty else {
            throw BPFError(.pinIncompatible, operation: "reuse pin", subject: "\(map) at \(path)",
                           hint: "load with policy .replace to discard the pinned map, or remove it (rm \(path))",
                           detail: different.map { "\($0.0): pinned \($0.1), object defines \($0.2)" }.joined(separator: "; "))
        }
    }
}
