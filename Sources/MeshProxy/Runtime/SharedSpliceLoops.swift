import MeshKernel
import NIOCore
import Synchronization

/// The splice loops of a shared event-loop group: one beside each of the
/// group's event loops that tenants listen on, started with the first
/// connection that moves to it, and stopped with the proxy. The plaintext
/// connections of the tenants listening on an event loop — spliced, or
/// served in HTTP — are served on the loop beside it, as a tenant on a
/// thread of its own has them on its own splice loop: NIO accepts and admits
/// them, and their bytes move outside it.
final class SharedSpliceLoops: Sendable {
    private struct State {
        /// The running loops, by the event loop each is beside (its `ObjectIdentifier`).
        var loops: [ObjectIdentifier: SpliceLoop] = [:]
        /// The polling budgets of the loops beside the event loops tenants listen on, keyed alike.
        var spins: [ObjectIdentifier: Duration] = [:]
        /// The budget of a loop without one of its own (no tenant listens beside it any more).
        var spin = Duration.zero
        var stopped = false

        func spin(beside key: ObjectIdentifier) -> Duration { spins[key] ?? spin }
    }

    private let state = Mutex(State())

    /// The splice loop beside `eventLoop`: the running one, or a new one
    /// (named `mesh-shared`, at its polling budget) when none runs;
    /// nil once the loops are stopped. Throws why a loop cannot be started.
    func loop(beside eventLoop: any EventLoop) throws(Errno) -> SpliceLoop? {
        try state.withLock { state throws(Errno) -> SpliceLoop? in
            guard !state.stopped else { return nil }
            let key = ObjectIdentifier(eventLoop)
            if let running = state.loops[key], running.isRunning { return running }
            let loop = try SpliceLoop(name: "mesh-shared")
            loop.spin(upTo: state.spin(beside: key))
            state.loops[key] = loop
            return loop
        }
    }

    /// The running splice loop beside `eventLoop`, if there is one.
    func runningLoop(beside eventLoop: any EventLoop) -> SpliceLoop? {
        state.withLock { $0.loops[ObjectIdentifier(eventLoop)] }.flatMap { $0.isRunning ? $0 : nil }
    }

    /// Lets the loop beside each event loop of `tenancies` poll for up to the
    /// longest of their budgets before it sleeps (``SpliceLoop/spin(upTo:)``),
    /// and the others for up to `otherwise`: the running loops and those started later.
    func spin(upTo tenancies: [(tenancy: Tenancy, budget: Duration)], otherwise: Duration) {
        var spins: [ObjectIdentifier: Duration] = [:]
        for (tenancy, budget) in tenancies { spins[tenancy.key] = max(spins[tenancy.key] ?? .zero, budget) }
        state.withLock { state in
            (state.spins, state.spin) = (spins, otherwise)
            for (key, loop) in state.loops { loop.spin(upTo: state.spin(beside: key)) }
        }
    }

    /// Stops every loop (the connections still on them close) and starts no more.
    func stop() {
        let loops = state.withLock { state in
            state.stopped = true
            defer { state.loops = [:] }
            return Array(state.loops.values)
        }
        for loop in loops { loop.stop() }
    }

    /// The host of a tenant listening on `eventLoop`.
    func tenancy(beside eventLoop: any EventLoop) -> Tenancy {
        Tenancy(loops: self, eventLoop: eventLoop)
    }

    /// One tenant's place on the splice loop beside its listener's event
    /// loop: that loop, and the tenant's own HTTP upstream pool on it.
    final class Tenancy: SpliceLoopHost {
        private let loops: SharedSpliceLoops
        private let eventLoop: any EventLoop
        /// Its event loop's identity: the key of the splice loop beside it.
        fileprivate var key: ObjectIdentifier { ObjectIdentifier(eventLoop) }
        private let held = Mutex<(pool: UpstreamPool?, closed: Bool)>((nil, false))

        fileprivate init(loops: SharedSpliceLoops, eventLoop: any EventLoop) {
            self.loops = loops
            self.eventLoop = eventLoop
        }

        func spliceLoop() throws(Errno) -> SpliceLoop? { try loops.loop(beside: eventLoop) }

        var runningSpliceLoop: SpliceLoop? { loops.runningLoop(beside: eventLoop) }

        func httpLoop() throws(Errno) -> (loop: SpliceLoop, pool: UpstreamPool)? {
            guard let loop = try spliceLoop() else { return nil }
            return held.withLock { held -> (loop: SpliceLoop, pool: UpstreamPool)? in
                guard !held.closed else { return nil }
                // (A loop that replaced one whose thread ended gets a pool of its own.)
                if let pool = held.pool, pool.eventLoop === loop { return (loop, pool) }
                let pool = UpstreamPool(eventLoop: loop)
                held.pool = pool
                return (loop, pool)
            }
        }

        /// Closes the tenant's idle upstream connections on the loop, and keeps
        /// no more (the tenant, or this listener of it, is going): from now on
        /// ``httpLoop()`` is nil, and a connection still admitted is served on NIO.
        func closePool() {
            let pool = held.withLock { held in
                held.closed = true
                return held.pool
            }
            guard let pool else { return }
            pool.eventLoop.execute { pool.close() }
        }
    }
}
