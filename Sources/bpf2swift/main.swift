// bpf2swift: compiles a BPF C program with clang and writes the Swift that
// embeds it, with a typed skeleton and mirrors of its C types.
//
//   bpf2swift --clang CLANG --source foo.bpf.c --output foo.bpf.swift
//             [--include DIR]... [--access public|internal] [--module MeshKernel]
//   bpf2swift --object foo.o --name foo --output foo.swift [--access ...]
//
// `--module MeshKernel` marks generated code that lives inside MeshKernel
// itself (no `import MeshKernel`).
import BPF2Swift
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("bpf2swift: error: \(message)\n".utf8))
    exit(1)
}

var options: [String: [String]] = [:]
var arguments = CommandLine.arguments.dropFirst()
while let flag = arguments.popFirst() {
    guard flag.hasPrefix("--"), let value = arguments.popFirst() else { fail("usage: see the comment at the top of bpf2swift/main.swift") }
    options[String(flag.dropFirst(2)), default: []].append(value)
}
guard let output = options["output"]?.last else { fail("--output is required") }

let objectBytes: [UInt8]
let objectName: String
let sourceName: String
if let source = options["source"]?.last {
    guard let clang = options["clang"]?.last else { fail("--clang is required with --source") }
    sourceName = URL(fileURLWithPath: source).lastPathComponent
    objectName = sourceName.hasSuffix(".bpf.c") ? String(sourceName.dropLast(6)) : URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent
    let objectPath = output + ".o"
    let process = Process()
    process.executableURL = URL(fileURLWithPath: clang)
    let multiarch = "/usr/include/x86_64-linux-gnu"
    // -mcpu=v3 (the default of the toolchain's clang, stated so another clang agrees): the programs use BPF atomics.
    process.arguments = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"]
        + (options["include"] ?? []).map { "-I\($0)" } + ["-I\(multiarch)", "-c", source, "-o", objectPath]
    do { try process.run() } catch { fail("cannot run \(clang): \(error)") }
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { fail("clang failed on \(source)") }
    guard let data = FileManager.default.contents(atPath: objectPath) else { fail("clang wrote no \(objectPath)") }
    try? FileManager.default.removeItem(atPath: objectPath)
    objectBytes = Array(data)
} else if let object = options["object"]?.last {
    guard let data = FileManager.default.contents(atPath: object) else { fail("cannot read \(object)") }
    objectBytes = Array(data)
    sourceName = URL(fileURLWithPath: object).lastPathComponent
    objectName = options["name"]?.last ?? URL(fileURLWithPath: object).deletingPathExtension().lastPathComponent
} else {
    fail("give --source (a .bpf.c file) or --object (a compiled object)")
}

let generatorOptions = SkeletonGenerator.Options(
    objectName: objectName, sourceFileName: sourceName, access: options["access"]?.last ?? "internal",
    importsMeshKernel: options["module"]?.last != "MeshKernel")
do {
    let swift = try SkeletonGenerator.generate(object: objectBytes, options: generatorOptions)
    try Data(swift.utf8).write(to: URL(fileURLWithPath: output), options: .atomic)
} catch let error as GeneratorError {
    fail("\(sourceName): \(error)")
} catch {
    fail("writing \(output): \(error)")
}
