import Testing
@testable import MeshProxy

@Suite("Choosing a route for a request")
struct HTTPRoutingTests {
    private let routing = HTTPRouting(routes: [
        HTTPRoute(host: "kelvin.example", cluster: "kelvin"),
        HTTPRoute(host: "API.Example", pathPrefix: "/v1", cluster: "api"),
        HTTPRoute(pathPrefix: "/static", headers: ["x-canary": "yes"], cluster: "canary"),
        HTTPRoute(pathPrefix: "/static", cluster: "static"),
    ], clusters: [:])

    private func cluster(host: String?, path: String, headers: [String: String] = [:]) -> String? {
        routing.route(host: host, path: path) { headers[$0] }?.cluster
    }

    @Test("a route's host matches the request's host name in any ASCII case on either side, without its port; the first matching route wins")
    func hosts() {
        #expect(cluster(host: "api.example", path: "/v1/users") == "api")
        #expect(cluster(host: "Api.EXAMPLE:8080", path: "/v1") == "api")
        #expect(cluster(host: "api.example.org", path: "/v1") == nil)
        #expect(cluster(host: "api.exampl", path: "/v1") == nil)
        #expect(cluster(host: "KELVIN.example", path: "/") == "kelvin")
        #expect(cluster(host: "\u{212A}elvin.example", path: "/") == nil, "only ASCII letters fold: not the Kelvin sign to k")
        #expect(cluster(host: nil, path: "/v1") == nil, "a route naming a host needs one")
        #expect(cluster(host: "api.example", path: "/v2") == nil, "the path prefix is compared too")
        #expect(cluster(host: "api.example", path: "/static/a.css") == "static")
    }

    @Test("header conditions must hold with exact values")
    func headers() {
        #expect(cluster(host: "any", path: "/static/a", headers: ["x-canary": "yes"]) == "canary")
        #expect(cluster(host: "any", path: "/static/a", headers: ["x-canary": "Yes"]) == "static")
        #expect(cluster(host: "any", path: "/other") == nil)
    }
}
