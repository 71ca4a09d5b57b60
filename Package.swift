// swift-tools-version:6.0
import PackageDescription

/// BPF programs in `bpf/<TargetName>/*.bpf.c` are compiled by the toolchain's
/// clang and turned into Swift (embedded object, typed skeleton, C type
/// mirrors) for the target that applies `BPF2SwiftPlugin`.
let bpfPlugin: [Target.PluginUsage] = [.plugin(name: "BPF2SwiftPlugin")]

let package = Package(
    name: "swift-bpf-mesh",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "MeshKernel", targets: ["MeshKernel"]),
        .library(name: "MeshTelemetry", targets: ["MeshTelemetry"]),
        .plugin(name: "BPF2SwiftPlugin", targets: ["BPF2SwiftPlugin"]),
        .executable(name: "bpf2swift", targets: ["bpf2swift"]),
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
        .target(
            name: "MeshTelemetry",
            dependencies: ["MeshKernel"],
            plugins: bpfPlugin
        ),
        .target(name: "BPF2Swift", dependencies: ["BPFObjectFile"]),
        .executableTarget(name: "bpf2swift", dependencies: ["BPF2Swift"]),
        .plugin(name: "BPF2SwiftPlugin", capability: .buildTool(), dependencies: ["bpf2swift"]),
        .executableTarget(
            name: "mesh-demo",
            dependencies: ["MeshKernel"],
            path: "Examples/mesh-demo"
        ),
        .executableTarget(
            name: "syscall-counter",
            dependencies: ["MeshKernel"],
            path: "Examples/syscall-counter",
            plugins: bpfPlugin
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
        .target(
            name: "MeshTestSupport",
            dependencies: ["MeshKernel"],
            path: "Tests/MeshTestSupport"
        ),
        .testTarget(
            name: "MeshTelemetryTests",
            dependencies: ["MeshTelemetry", "MeshKernel", "MeshTestSupport"]
        ),
        .testTarget(
            name: "MeshKernelTests",
            dependencies: ["MeshKernel", "BPF2Swift", "MeshTestSupport"],
            plugins: bpfPlugin
        ),
    ],
    swiftLanguageModes: [.v6]
)
