import MeshKernel
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
        routing.routeIndex(host: { host }, path: path) { headers[$0] }.map { routing.routes[$0].cluster }
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

    @Test("a path prefix is compared byte for byte: an empty prefix matches all, a longer one nothing, a differing byte anywhere fails; no Unicode equivalence")
    func bytePrefix() {
        #expect("/static/a.css".hasBytePrefix(""))
        #expect("/static/a.css".hasBytePrefix("/static/"))
        #expect("/static".hasBytePrefix("/static"))
        #expect(!"/static".hasBytePrefix("/static/"))
        #expect(!"/static/a.css".hasBytePrefix("/statiC"))
        #expect(!"/static/a.css".hasBytePrefix("?static"))
        #expect("/caf\u{E9}/menu".hasBytePrefix("/caf\u{E9}"))
        #expect(!"/cafe\u{301}/menu".hasBytePrefix("/caf\u{E9}"), "canonically equivalent, but other bytes")
        #expect(!"".hasBytePrefix("/"))
    }

    @Test("header conditions must hold with exact values")
    func headers() {
        #expect(cluster(host: "any", path: "/static/a", headers: ["x-canary": "yes"]) == "canary")
        #expect(cluster(host: "any", path: "/static/a", headers: ["x-canary": "Yes"]) == "static")
        #expect(cluster(host: "any", path: "/other") == nil)
    }

    @Test("route targets: routes naming one cluster share it and its turns; a new configuration goes on from each cluster's turn; a route naming no cluster has no target")
    func targets() {
        let endpoints = [Endpoint(.loopback, port: 17_167), Endpoint(.loopback, port: 17_168)]
        let routing = HTTPRouting(routes: [HTTPRoute(pathPrefix: "/a", cluster: "web"), HTTPRoute(pathPrefix: "/b", cluster: "web"),
                                           HTTPRoute(cluster: "missing")],
                                  clusters: ["web": HTTPCluster(endpoints: endpoints)])
        let targets = RouteTargets(routing)
        let first = targets[route: 0], second = targets[route: 1]
        #expect(first === second && first?.name == "web" && first?.settings.endpoints == endpoints)
        #expect(targets[route: 2] == nil && targets[route: 3] == nil)
        #expect([first?.takeTurn(), second?.takeTurn(), first?.takeTurn()] == [0, 1, 2])
        let next = RouteTargets(routing, carryingTurnsOf: targets)
        #expect(next[route: 0] !== first, "the new configuration's own cluster")
        #expect(next[route: 1]?.takeTurn() == 3, "the turn goes on")
        #expect(RouteTargets(routing)[route: 0]?.takeTurn() == 0)
    }
}
