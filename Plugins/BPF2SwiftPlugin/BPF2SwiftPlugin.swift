import Foundation
import PackagePlugin

/// Compiles the BPF C programs of a target and generates their Swift side.
///
/// For a target named `T`, every `bpf/T/*.bpf.c` of the package is compiled
/// by `bpf2swift` with the clang that ships with the Swift toolchain
/// (`-O2 -g -target bpf -mcpu=v3`, headers from `bpf/include`). Each object becomes
/// one generated Swift file: the object embedded as `EmbeddedBPFObject.<name>`,
/// a typed skeleton `<Name>Object`, and Swift mirrors of its C types. Only
/// the generated `.swift` file is a declared output, so no resource bundle
/// is created; editing a `.bpf.c` file or a header rebuilds it.
@main
struct BPF2SwiftPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let packageDirectory = context.package.directoryURL
        let sourceDirectory = packageDirectory.appending(path: "bpf/\(target.name)")
        let includeDirectory = packageDirectory.appending(path: "bpf/include")
        let fileManager = FileManager.default
        guard let entries = try? fileManager.contentsOfDirectory(atPath: sourceDirectory.path()) else {
            return []
        }
        let headers = ((try? fileManager.contentsOfDirectory(atPath: includeDirectory.path())) ?? [])
            .filter { $0.hasSuffix(".h") }
            .map { includeDirectory.appending(path: $0) }
        let clang = try context.tool(named: "clang").url
        let generator = try context.tool(named: "bpf2swift").url
        // MeshKernel's own objects are part of its API; other targets keep theirs internal.
        let isMeshKernel = target.name == "MeshKernel"

        return entries.filter { $0.hasSuffix(".bpf.c") }.sorted().map { file in
            let source = sourceDirectory.appending(path: file)
            let output = context.pluginWorkDirectoryURL.appending(path: "\(file.dropLast(2)).swift")
            return .buildCommand(
                displayName: "bpf2swift \(file)",
                executable: generator,
                arguments: [
                    "--clang", clang.path(), "--source", source.path(), "--include", includeDirectory.path(),
                    "--output", output.path(), "--access", isMeshKernel ? "public" : "internal",
                    "--module", target.name,
                ],
                inputFiles: [source] + headers,
                outputFiles: [output]
            )
        }
    }
}
