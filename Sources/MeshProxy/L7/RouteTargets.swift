import Synchronization

/// An HTTP tenant's routing, with where its routes lead looked up once per
/// configuration rather than per request: each route's cluster — its name,
/// its settings and its round-robin turn, shared by the tenant's connections.
final class RouteTargets: Sendable {
    /// The routing the targets are of.
    let routing: HTTPRouting
    /// Whether a route reaches a cluster that goes to each connection's
    /// original destination (``HTTPCluster/toOriginalDestination``): each
    /// connection's destination is then needed before it is served.
    let reachesOriginalDestination: Bool

    /// A cluster as the routes naming it reach it.
    final class Cluster: Sendable {
        let name: String
        let settings: HTTPCluster
        private let turn: Atomic<Int>

        fileprivate init(name: String, settings: HTTPCluster, turn: Int) {
            self.name = name
            self.settings = settings
            self.turn = Atomic(turn)
        }

        /// The cluster's next round-robin turn.
        func takeTurn() -> Int { turn.wrappingAdd(1, ordering: .relaxed).oldValue }

        /// The turn a replacement starts from.
        fileprivate var nextTurn: Int { turn.load(ordering: .relaxed) }
    }

    /// By route index: the cluster the route names (nil for a name that has
    /// no cluster, which validation refuses).
    private let clusters: [Cluster?]

    /// The targets of `routing`'s routes; clusters of `previous` with the
    /// same name go on from their turn, so a change of configuration does not
    /// send each cluster's next requests to its first endpoint again.
    init(_ routing: HTTPRouting, carryingTurnsOf previous: RouteTargets? = nil) {
        self.routing = routing
        reachesOriginalDestination = routing.routes.contains { routing.clusters[$0.cluster]?.toOriginalDestination == true }
        var byName: [String: Cluster] = [:]
        let earlier = Dictionary((previous?.clusters ?? []).compactMap { $0.map { ($0.name, $0.nextTurn) } }, uniquingKeysWith: { first, _ in first })
        clusters = routing.routes.map { route in
            if let made = byName[route.cluster] { return made }
            guard let settings = routing.clusters[route.cluster] else { return nil }
            let cluster = Cluster(name: route.cluster, settings: settings, turn: earlier[route.cluster] ?? 0)
            byName[route.cluster] = cluster
            return cluster
        }
    }

    /// The cluster of route `index`.
    subscript(route index: Int) -> Cluster? {
        clusters.indices.contains(index) ? clusters[index] : nil
    }
}
