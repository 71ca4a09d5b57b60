import MeshTelemetryPrometheus
import Prometheus
import Testing
@testable import MeshProxy

@Suite("A tenant's counters in Prometheus exposition")
struct TenantCountersTests {
    @Test("answered requests are one series per standard method and status, any other method is _OTHER; every outcome counts under its own label")
    func seriesAndOutcomes() {
        let registry = PrometheusCollectorRegistry()
        let counters = TenantCounters(tenant: "shop", factory: MeshPrometheusFactory(registry: registry))
        // Series that share a method or a status stay apart: (GET, 200), (GET, 404), (PATCH, 200), and
        // two unknown methods folded into one _OTHER series per status.
        for (method, status) in [("GET", 200), ("GET", 200), ("GET", 404), ("PATCH", 200), ("BREW", 200), ("get", 200), ("BREW", 999)] {
            counters.httpAnswered(method: method, status: status, duration: .milliseconds(1))
        }
        for outcome in TenantCounters.Outcome.allCases { counters.record(outcome) }
        counters.record(.requestRouted)

        let exposition = registry.emitToString()
        func requests(_ method: String, _ status: Int) -> String {
            #"mesh_proxy_http_requests_total{tenant="shop",http_request_method="\#(method)",http_response_status_code="\#(status)"}"#
        }
        #expect(exposition.contains(requests("GET", 200) + " 2"), "\(exposition)")
        #expect(exposition.contains(requests("GET", 404) + " 1"))
        #expect(exposition.contains(requests("PATCH", 200) + " 1"))
        #expect(exposition.contains(requests("_OTHER", 200) + " 2"))
        #expect(exposition.contains(requests("_OTHER", 999) + " 1"))
        #expect(!exposition.contains(#"http_request_method="BREW""#) && !exposition.contains(#"http_request_method="get""#))
        let series = exposition.split(separator: "\n").filter { $0.hasPrefix("mesh_proxy_http_requests_total{") }
        #expect(series.count == 5, "\(series)")

        let labels = ["accepted", "refused_limit", "refused_rate", "upstream_failed", "no_original_destination", "foreign_tenant", "request_routed",
                      "no_route", "bad_request", "shed", "tls_refused", "forbidden", "rate_limited_request", "retried", "endpoint_ejected"]
        #expect(TenantCounters.Outcome.allCases.map(\.label) == labels)
        for label in labels {
            let count = label == "request_routed" ? 2 : 1
            #expect(exposition.contains(#"mesh_proxy_connections_total{tenant="shop",outcome="\#(label)"} \#(count)"#), "\(label)")
        }
    }
}
