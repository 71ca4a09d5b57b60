import Foundation
import MeshKernel
@testable import MeshProxy
import MeshTestSupport
import NIOCore
import NIOPosix
import Prometheus
import Testing

@Suite("MeshProxy tenant threads", .serialized)
struct TenantThreadTests {
    private let loopback = IPAddress.loopback

    @Test("a weight maps to the nice level whose kernel weight is as far below the heaviest tenant's (1.25 a level), from the process's own, at most 19")
    func niceness() {
        #expect(TenantThread.niceness(weight: 1, heaviest: 1) == 0)
        #expect(TenantThread.niceness(weight: 3, heaviest: 3) == 0)
        #expect(TenantThread.niceness(weight: 1, heaviest: 3) == 5)       // 1.25^5 = 3.05
        #expect(TenantThread.niceness(weight: 2, heaviest: 4) == 3)       // 1.25^3 = 1.95
        #expect(TenantThread.niceness(weight: 100, heaviest: 125) == 1)
        #expect(TenantThread.niceness(weight: 1, heaviest: 10_000) == 19) // 1.25^19 = 69: the kernel's range ends there
        // From a process that runs niced itself.
        #expect(TenantThread.niceness(weight: 3, heaviest: 3, base: -5) == -5)
        #expect(TenantThread.niceness(weight: 1, heaviest: 3, base: 2) == 7)
        #expect(TenantThread.niceness(weight: 1, heaviest: 3, base: 16) == 19)
    }

    @Test("a kernel CPU list reads as its CPUs; anything else as nil")
    func cpuLists() {
        #expect(TenantThread.cpus(inList: "\t0-1") == [0, 1])
        #expect(TenantThread.cpus(inList: " 0") == [0])
        #expect(TenantThread.cpus(inList: "0-2,5,7-8") == [0, 1, 2, 5, 7, 8])
        #expect(TenantThread.cpus(inList: "3-1") == nil)
        #expect(TenantThread.cpus(inList: "x") == nil)
        #expect(TenantThread.cpus(inList: "1-2-3") == nil)
    }

    @Test("a tenant thread's name is mesh: and the tenant's name, cut to the kernel's 15 bytes at a character boundary")
    func threadNames() {
        #expect(TenantThread.threadName(for: "web") == "mesh:web")
        #expect(TenantThread.threadName(for: "0123456789abcdef") == "mesh:0123456789")
        // "é" is two bytes: it would end at byte 16, so the name stops before it (the byte cut gave "mesh").
        #expect(TenantThread.threadName(for: "012345678é") == "mesh:012345678")
    }

    @Test("each tenant runs on a thread of its own, niced by its weight beside the heaviest tenant's, and serves its plaintext HTTP on a second (its splice loop's, started with its first connection, at the same nice value); their CPU time is counted and exported; a reweighting moves both; a removed tenant's threads end after its last connection, the others' with the proxy")
    func lifecycle() async throws {
        let backend = try await DelayedHTTPServer(port: 17_153, serviceTime: .zero)
        defer { Task { await backend.stop() } }
        func tenant(_ name: String, port: Int, weight: Int) -> TenantConfiguration {
            TenantConfiguration(name: name, listener: Endpoint(loopback, port: UInt16(port)),
                                mode: .http(.everything(toLoopbackPort: 17_153)), weight: weight)
        }
        let registry = PrometheusCollectorRegistry()
        try await withProxy(ProxyConfiguration(tenants: [tenant("thr-a", port: 17_093, weight: 1), tenant("thr-b", port: 17_094, weight: 2)]),
                            metrics: registry) { proxy in
            let base = TenantThread.processNiceness
            #expect(threads(named: "mesh:thr-a").map(\.niceness) == [min(19, base + 3)])
            #expect(threads(named: "mesh:thr-b").map(\.niceness) == [base])
            // A tenant's work is done on its thread, and counted as its CPU time: thr-a's grows by more than idle thr-b's.
            func cpuTime(_ tenant: String) -> Duration { proxy.statistics(tenant)?.cpuTime ?? .zero }
            let (before, idleBefore) = (cpuTime("thr-a"), cpuTime("thr-b"))
            let served = try await httpLoad(port: 17_093, connections: 1, requests: 200)
            #expect(served.statuses == [200: 200])
            let (after, idleAfter) = (cpuTime("thr-a"), cpuTime("thr-b"))
            #expect(after - before > idleAfter - idleBefore, "thr-a \(before) -> \(after), idle thr-b \(idleBefore) -> \(idleAfter)")
            // ... and reported each second as a Prometheus counter, which catches up with it.
            let reported = #/mesh_proxy_cpu_seconds_total\{tenant="thr-a"\} ([0-9.e+-]+)/#
            #expect(await eventually(timeout: .seconds(5)) {
                registry.emitToString().firstMatch(of: reported).flatMap { Double($0.1) }.map { $0 >= after.inSeconds * 0.999 } ?? false
            }, "thr-a used \(after); \(registry.emitToString())")

            // Reweighted: thr-a becomes the heaviest (raising its priority needs CAP_SYS_NICE; without, it stays), thr-b is lowered.
            try await proxy.apply(ProxyConfiguration(tenants: [tenant("thr-a", port: 17_093, weight: 8), tenant("thr-b", port: 17_094, weight: 2)]))
            // (thr-a's connections were served on its splice loop; thr-b has had none.)
            let raised = Capability.sysNice.isEffective ? base : min(19, base + 3)
            #expect(threads(named: "mesh:thr-a").map(\.niceness) == [raised, raised])
            #expect(threads(named: "mesh:thr-b").map(\.niceness) == [min(19, base + 6)])

            // thr-b is removed while a connection to it is open: its thread serves that connection to its end.
            let open = try await ClientBootstrap(group: peerGroup).connect(host: "127.0.0.1", port: 17_094).get()
            #expect(await eventually(timeout: .seconds(10)) { proxy.statistics("thr-b")?.activeConnections == 1 })
            try await proxy.apply(ProxyConfiguration(tenants: [tenant("thr-a", port: 17_093, weight: 8)]))
            #expect(threads(named: "mesh:thr-b").map(\.niceness) == [min(19, base + 6), min(19, base + 6)])
            try await open.close()
            #expect(await eventually(timeout: .seconds(10)) { threads(named: "mesh:thr-b").isEmpty })
            #expect(threads(named: "mesh:thr-a").count == 2)
            #expect(try await httpLoad(port: 17_093, connections: 1, requests: 1).statuses == [200: 1])
        }
        #expect(await eventually(timeout: .seconds(10)) { threads(named: "mesh:thr-a").isEmpty })
    }
}
