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
        .library(name: "MeshTelemetryPrometheus", targets: ["MeshTelemetryPrometheus"]),
        .library(name: "MeshProxy", targets: ["MeshProxy"]),
        .plugin(name: "BPF2SwiftPlugin", targets: ["BPF2SwiftPlugin"]),
        .executable(name: "bpf2swift", targets: ["bpf2swift"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.27.0"),
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
            dependencies: [
                "MeshKernel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            plugins: bpfPlugin
        ),
        .target(
            name: "MeshProxy",
            dependencies: [
                "MeshKernel",
                "MeshTelemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "MeshTelemetryPrometheus",
            dependencies: [
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
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
            name: "http-watch",
            dependencies: ["MeshKernel", "MeshTelemetry"],
            path: "Examples/http-watch"
        ),
        .executableTarget(
            name: "mesh-proxy",
            dependencies: ["MeshKernel", "MeshProxy", "MeshTelemetry", "MeshTelemetryPrometheus",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOHTTP1", package: "swift-nio"),
                           .product(name: "Prometheus", package: "swift-prometheus"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            path: "Examples/mesh-proxy"
        ),
        .executableTarget(
            name: "mesh-preflight",
            dependencies: ["MeshKernel"],
            path: "Examples/mesh-preflight"
        ),
        .executableTarget(
            name: "mesh-bench",
            dependencies: ["MeshKernel", "MeshTelemetry", "MeshTelemetryPrometheus", "CBenchBaseline",
                           .product(name: "Prometheus", package: "swift-prometheus")],
            path: "Benchmarks/mesh-bench",
            plugins: bpfPlugin
        ),
        .target(
            name: "CBenchBaseline",
            path: "Benchmarks/CBenchBaseline",
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .target(
            name: "MeshTestSupport",
            dependencies: ["MeshKernel",
                           .product(name: "Tracing", package: "swift-distributed-tracing"),
                           .product(name: "InMemoryTracing", package: "swift-distributed-tracing")],
            path: "Tests/MeshTestSupport"
        ),
        .testTarget(
            name: "MeshProxyTests",
            dependencies: ["MeshProxy", "MeshKernel", "MeshTelemetry", "MeshTestSupport", "MeshTelemetryPrometheus",
                           .product(name: "Prometheus", package: "swift-prometheus"),
                           .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOHTTP1", package: "swift-nio"),
                           .product(name: "NIOEmbedded", package: "swift-nio"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]
        ),
        .testTarget(
            name: "MeshTelemetryTests",
            dependencies: ["MeshTelemetry", "MeshTelemetryPrometheus", "MeshKernel", "MeshTestSupport",
                           .product(name: "Prometheus", package: "swift-prometheus"),
                           .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]
        ),
        .testTarget(
            name: "MeshKernelTests",
            dependencies: ["MeshKernel", "BPF2Swift", "MeshTestSupport"],
            plugins: bpfPlugin
        ),
    ],
    swiftLanguageModes: [.v6]
)
