import Foundation

/// Runs `body` with a new, uniquely named directory under the system's
/// temporary directory, and removes it with its contents afterwards, also
/// when `body` throws.
public func withTemporaryDirectory<R>(_ tag: String, _ body: (URL) throws -> R) throws -> R {
    let directory = try makeTemporaryDirectory(tag)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try body(directory)
}

/// Runs `body` with a new, uniquely named directory under the system's
/// temporary directory, and removes it with its contents afterwards, also
/// when `body` throws.
public func withTemporaryDirectory<R>(_ tag: String, _ body: (URL) async throws -> R) async throws -> R {
    let directory = try makeTemporaryDirectory(tag)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try await body(directory)
}

/// Creates a new, uniquely named directory (its name begins with `tag`) under
/// the system's temporary directory; the caller removes it. Prefer
/// ``withTemporaryDirectory(_:_:)`` where the directory's life is one scope.
public func makeTemporaryDirectory(_ tag: String) throws -> URL {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueName(tag))
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    return directory
}
