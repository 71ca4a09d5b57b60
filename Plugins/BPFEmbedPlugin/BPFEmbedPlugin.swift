import Foundation
import PackagePlugin

/// Compiles the BPF C programs of a target and embeds each object file into
/// the target as generated Swift source.
///
/// For a target named `T`, every `bpf/T/*.bpf.c` file of the package is
/// compiled with the clang that ships with the Swift toolchain
/// (`-O2 -g -target bpf`, headers from `bpf/include`) and becomes a static
/// property `EmbeddedBPFObject.<name>` (for `sock_redirect.bpf.c`:
/// `EmbeddedBPFObject.sockRedirect`). Only the generated `.swift` file is a
/// declared output, so no resource bundle is created; the object travels as
/// base64 text, which compiles in a fraction of the time of a byte array
/// literal.
@main
struct BPFEmbedPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let packageDirectory = context.package.directoryURL
        let sourceDirectory = packageDirectory.appending(path: "bpf/\(target.name)")
        let includeDirectory = packageDirectory.appending(path: "bpf/include")
        let fileManager = FileManager.default
        guard let entries = try? fileManager.contentsOfDirectory(atPath: sourceDirectory.path()) else {
            return []
        }
        let sources = entries.filter { $0.hasSuffix(".bpf.c") }.sorted()
        let headers = ((try? fileManager.contentsOfDirectory(atPath: includeDirectory.path())) ?? [])
            .filter { $0.hasSuffix(".h") }
            .map { includeDirectory.appending(path: $0) }
        let clang = try context.tool(named: "clang").url
        let script = packageDirectory.appending(path: "Plugins/BPFEmbedPlugin/embed-bpf-object.sh")
        // MeshKernel's own objects are part of its API; other targets keep theirs internal.
        let isMeshKernel = target.name == "MeshKernel"
        let importLine = isMeshKernel ? "" : "import MeshKernel"
        let access = isMeshKernel ? "public" : "internal"

        return sources.map { file in
            let stem = String(file.dropLast(".bpf.c".count))
            let source = sourceDirectory.appending(path: file)
            let output = context.pluginWorkDirectoryURL.appending(path: "\(stem).bpf.swift")
            return .buildCommand(
                displayName: "Compiling BPF program \(file)",
                executable: URL(filePath: "/bin/sh"),
                arguments: [
                    script.path(), clang.path(), source.path(), includeDirectory.path(),
                    output.path(), stem, access, importLine,
                ],
                inputFiles: [source, script] + headers,
                outputFiles: [output]
            )
        }
    }
}
