import Foundation
import InMemoryTracing
import Logging
import MeshKernel
import MeshTelemetry
import MeshTelemetryPrometheus
import MeshTestSupport
import Prometheus
import ServiceLifecycle
import Synchronization
import Testing
import Tracing

@Suite("HTTP telemetry as a service: Prometheus metrics, traces and a flow log", .kernel, .serialized)
struct HTTPTelemetryServiceTests {
    @Test("metrics pass promtool with exact counts, spans join the caller's trace with the kernel's timing, the flow log has one line per request")
    func metricsTracesAndFlowLog() async throws {
        try await withNetworkNamespace { namespace in
            let root = try Cgroup.create(uniqueName("telemetrysvc"))
            let server = try Cgroup.create("server", under: root)
            let client = try Cgroup.create("client", under: root)
            defer { for cgroup in [server, client, root] { try? cgroup.remove() } }

            let capture = try HTTPCapture()
            defer { capture.detach() }
            try capture.watch(server, identity: 100)
            let registry = PrometheusCollectorRegistry()
            let metrics = HTTPMetrics(factory: MeshPrometheusFactory(registry: registry, help: HTTPMetrics.help),
                                      workloadName: { $0 == 100 ? "web" : "identity-\($0)" })
            let tracer = W3CInMemoryTracer()
            let lines = Mutex<[String]>([])
            let seen = Mutex(0)
            let service = HTTPTelemetryService(
                capture: capture, metrics: metrics, tracing: HTTPTracing(tracer: tracer),
                flowLog: FlowLog(workloadName: { $0 == 100 ? "web" : nil }) { line in lines.withLock { $0.append(line) } },
                logger: Logger(label: "test"), pollInterval: .milliseconds(5), onExchange: { _ in seen.withLock { $0 += 1 } })
            let group = ServiceGroup(configuration: .init(services: [service], logger: Logger(label: "test")))
            let running = Task { try await group.run() }

            let web = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(httpServer)' 18090"))
            defer { web.stop() }
            #expect(try await awaitListeners(["127.0.0.1:18090"], in: namespace, timeout: .seconds(10)))
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736", parentID = "00f067aa0ba902b7"
            let base = "http://127.0.0.1:18090/status"
            try await offload {
                try runInCgroup(client.path, namespace: namespace,
                                "curl -s -o /dev/null -H 'traceparent: 00-\(traceID)-\(parentID)-01' \(base)/200/5 \(base)/200/6 \(base)/503/7").check()
                try runInCgroup(client.path, namespace: namespace, "curl -s -o /dev/null -X POST -d x=1 \(base)/201/1 \(base)/404/1").check()
            }
            #expect(await eventually(timeout: .seconds(10)) { seen.withLock { $0 } == 5 })
            await group.triggerGracefulShutdown()
            try await running.value

            // Prometheus exposition: promtool accepts it, and the counts are exact.
            let exposition = registry.emitToString()
            let promtool = try await offload { try run(["promtool", "check", "metrics"], input: exposition) }
            #expect(promtool.status == 0, "promtool: \(promtool.output) \(promtool.error)")
            #expect(exposition.contains(#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",status="200",reporter="server"} 2"#))
            #expect(exposition.contains(#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",status="503",reporter="server"} 1"#))
            #expect(exposition.contains(#"hubble_http_requests_total{method="POST",protocol="HTTP/1.1",status="404",reporter="server"} 1"#))
            #expect(exposition.contains(#"mesh_http_requests_total{source_workload="unknown",destination_workload="web",http_request_method="POST",http_response_status_code="201",reporter="server"} 1"#))
            #expect(exposition.contains(#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",server_address="127.0.0.1",network_protocol_version="1.1"} 2"#))
            #expect(exposition.contains("# HELP mesh_http_request_duration_seconds "))

            // Spans: one per request, server kind, the caller's trace joined, kernel timing.
            let spans = tracer.recorder.finishedSpans
            #expect(spans.count == 5)
            let traced = spans.filter { $0.traceID == traceID }
            #expect(traced.count == 3, "the three requests that carried the traceparent join its trace")
            #expect(traced.allSatisfy { $0.parentSpanID == parentID && $0.kind == .server })
            #expect(spans.filter { $0.traceID != traceID }.count == 2)
            let failed = try #require(spans.first { $0.attributes.get("http.response.status_code") == .int64(503) })
            #expect(failed.status?.code == .error)
            #expect(spans.allSatisfy { $0.endInstant.nanosecondsSinceEpoch > $0.startInstant.nanosecondsSinceEpoch })
            let now = UInt64(Date().timeIntervalSince1970 * 1e9)
            #expect(spans.allSatisfy { now - $0.startInstant.nanosecondsSinceEpoch < 60_000_000_000 }, "span times are wall-clock times")

            // The flow log: one JSON object per request.
            let logged = lines.withLock { $0 }
            #expect(logged.count == 5)
            for line in logged {
                let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                #expect(object["type"] as? String == "l7" && object["workload"] as? String == "web")
                #expect((object["status"] as? Int).map { [200, 201, 404, 503].contains($0) } == true)
            }
        }
    }
}


@Suite("The http-watch example", .kernel, .serialized)
struct HTTPWatchExampleTests {
    @Test("prints the live requests of the workload it watches, by method, status and reporter")
    func printsLiveMetrics() async throws {
        try await withNetworkNamespace { namespace in
            let root = try Cgroup.create(uniqueName("httpwatch"))
            let server = try Cgroup.create("server", under: root)
            defer { for cgroup in [server, root] { try? cgroup.remove() } }
            let web = try Background(cgroupCommand(server.path, namespace: namespace, "python3 -c '\(httpServer)' 18095"))
            defer { web.stop() }
            #expect(try await awaitListeners(["127.0.0.1:18095"], in: namespace, timeout: .seconds(10)))
            let tool = buildProductsDirectory.appendingPathComponent("http-watch").path
            let watcher = try Background([tool, server.path, "3"])
            // Traffic for as long as the watcher runs, however long it takes to start (bounded: 60 rounds of 5 requests),
            // from a thread of its own (the test's tasks can be held up for seconds by other suites' blocking work).
            let watcherID = watcher.pid
            try await offload {
                for _ in 0..<60 where kill(watcherID, 0) == 0 {
                    try runInCgroup(root.path, namespace: namespace,
                                    "curl -s -o /dev/null http://127.0.0.1:18095/status/200/1 http://127.0.0.1:18095/status/200/1 http://127.0.0.1:18095/status/404/1 http://127.0.0.1:18095/status/200/1 http://127.0.0.1:18095/status/200/1").check()
                    Thread.sleep(forTimeInterval: 0.25)   // pacing, not a wait for a condition
                }
            }
            let output = await watcher.finish()
            #expect(!output.hasSuffix(Background.killedMark), "the watcher did not exit: \(output)")
            #expect(output.contains("GET 200 server"), "\(output)")
            #expect(output.contains("GET 404 server"), "\(output)")
            #expect(output.contains(", 0 events lost"), "\(output)")
        }
    }
}
