import MeshKernel

/// A mesh for a test of the datapath's redirect to the per-node proxy: a
/// network namespace of the test's own, and a mesh cgroup with a workload's,
/// a proxy's and servers' cgroups inside it, the redirect attached to it.
public struct RedirectedMesh {
    /// The network namespace (loopback only).
    public let namespace: String
    /// The mesh's cgroup, and the workload's, the proxy's and the servers' inside it.
    public let cgroup: Cgroup, client: Cgroup, proxy: Cgroup, server: Cgroup
    /// The datapath's redirect, attached to the mesh.
    public let redirect: ProxyRedirect
}

/// Runs `body` in a ``RedirectedMesh`` (named by `tag`) whose redirect has
/// the given capacities, the client cgroup registered as a workload of
/// `tenant` with `identity` and the proxy cgroup as the proxy; all of it
/// detached and removed afterwards, even on failure.
public func withRedirectedMesh<R>(_ tag: String, tenant: UInt32, identity: UInt32, ruleCapacity: Int = 4_096, connectionCapacity: Int = 65_536,
                                  _ body: (RedirectedMesh) throws -> R) throws -> R {
    try withNetworkNamespace { namespace in
        try withCgroup(tag) { mesh in
            let client = try Cgroup.create("client", under: mesh)
            let proxy = try Cgroup.create("proxy", under: mesh)
            let server = try Cgroup.create("server", under: mesh)
            defer { for cgroup in [client, proxy, server] { try? cgroup.remove() } }
            let redirect = try ProxyRedirect(attachingTo: mesh, ruleCapacity: ruleCapacity, connectionCapacity: connectionCapacity)
            defer { redirect.detach() }
            try redirect.register(workload: client, tenant: tenant, identity: identity)
            try redirect.register(proxy: proxy)
            return try body(RedirectedMesh(namespace: namespace, cgroup: mesh, client: client, proxy: proxy, server: server, redirect: redirect))
        }
    }
}
