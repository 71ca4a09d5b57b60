import MeshKernel

/// Where a tenant's plaintext connections leave NIO for: a ``SpliceLoop``
/// and, for HTTP, the tenant's upstream pool on it. A tenant on a thread of
/// its own has a loop of its own (``TenantThread``); the tenants of a shared
/// event-loop group share the loop beside their listener's event loop
/// (``SharedSpliceLoops/Tenancy``).
protocol SpliceLoopHost: Sendable {
    /// The loop, started if none runs; nil once the host has ended (the
    /// connection then stays in NIO). Throws why a loop cannot be started.
    func spliceLoop() throws(Errno) -> SpliceLoop?
    /// The loop (``spliceLoop()``) and the tenant's HTTP upstream pool on it;
    /// nil once the host has ended (a shared tenancy: once its pool was
    /// closed; a tenant's thread keeps serving on its closed pool, which then keeps no connection).
    func httpLoop() throws(Errno) -> (loop: SpliceLoop, pool: UpstreamPool)?
    /// The loop, if one runs (none is started).
    var runningSpliceLoop: SpliceLoop? { get }
}

extension TenantThread: SpliceLoopHost {}
