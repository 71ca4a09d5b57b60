// swift-tools-version:6.0
import PackageDescription

/// BPF programs in `bpf/<TargetName>/*.bpf.c` are compiled by the toolchain's
/// clang and embedded into the target that applies `BPFEmbedPlugin`.
let bpfPlugin: [Target.PluginUsage] = [.plugin(name: "BPFEmbedPlugin")]

let package = Package(
    name: "swift-bpf-mesh",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "MeshKernel", targets: ["MeshKernel"]),
        .plugin(name: "BPFEmbedPlugin", targets: ["BPFEmbedPlugin"]),
    ],
    targets: [
        .target(
            name: "CBPFShim",
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z"), .linkedLibrary("cap")]
        ),
        .target(name: "BPFObjectFile"),
        .target(
            name: "MeshKernel",
            dependencies: ["CBPFShim", "BPFObjectFile"],
            plugins: bpfPlugin
        ),
        .plugin(name: "BPFEmbedPlugin", capability: .buildTool()),
        .executableTarget(
            name: "mesh-demo",
            dependencies: ["MeshKernel"],
            path: "Examples/mesh-demo"
        ),
        .executableTarget(
            name: "mesh-preflight",
            dependencies: ["MeshKernel"],
            path: "Examples/mesh-preflight"
        ),
        .executableTarget(
            name: "mesh-bench",
            dependencies: ["MeshKernel", "CBenchBaseline"],
            path: "Benchmarks/mesh-bench",
            plugins: bpfPlugin
        ),
        .target(
            name: "CBenchBaseline",
            path: "Benchmarks/CBenchBaseline",
            linkerSettings: [.linkedLibrary("bpf")]
        ),
        .testTarget(
            name: "MeshKernelTests",
            dependencies: ["MeshKernel"],
            plugins: bpfPlugin
        ),
    ],
    swiftLanguageModes: [.v6]
)
