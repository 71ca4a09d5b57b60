import CoreMetrics
import Glibc
import Logging
import MeshKernel
import MeshTelemetry
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import ServiceLifecycle
import Synchronization

/// The multi-tenant per-node proxy, as a swift-service-lifecycle `Service`.
///
/// Each tenant owns its listeners — the ports the datapath redirects its
/// workloads' connections to — and its own limits. A connection that
/// arrives is admitted under its tenant's connection limit (else closed at
/// once and counted), its original destination is recovered from the
/// datapath, and it is spliced to its upstream in both directions with
/// half-close carried across and backpressure per connection.
///
/// ``apply(_:)`` changes the tenants while connections flow: the new
/// configuration is checked as a whole and new listeners are bound before
/// anything else changes, so a bad configuration or an unavailable port
/// leaves the running one untouched; a tenant's change never touches
/// another tenant's listener or connections. A graceful shutdown stops
/// accepting, closes HTTP connections between requests (one in the middle of
/// a request after its answer, which says `Connection: close`), and waits up
/// to the drain timeout for connections to finish.
public final class MeshProxy: Service, Sendable {
    private struct Tenant: Sendable {
        var configuration: TenantConfiguration
        /// Its listening channels, by address.
        var listeners: [Endpoint: any Channel]
        let counters: TenantCounters
        /// The tenant's live configuration, read at each accept (limits change in place).
        let live: LiveConfiguration
        /// HTTP mode: its keep-alive upstream connections, on its listeners' event loop.
        let pool: UpstreamPool
        /// The thread it runs on, without a shared group.
        let thread: TenantThread?
        /// With a shared group: its place on the splice loop beside its listeners' event loop.
        let tenancy: SharedSpliceLoops.Tenancy?

        /// Where its plaintext connections leave NIO for: its thread's splice loop, or a shared group's.
        var loopHost: (any SpliceLoopHost)? { thread ?? tenancy }

        /// A removed tenant, its listeners closed: closes the idle upstream
        /// connections of its NIO loop and of its shared splice loop, and ends
        /// its thread after its last connection (with the thread's splice loop
        /// pool); open connections run on.
        func retire() {
            pool.eventLoop.execute { pool.close() }
            tenancy?.closePool()
            thread?.retire()
        }

        /// Closes the idle upstream connections (of NIO's loop and of the splice loop) and keeps no more.
        func closePools() {
            pool.eventLoop.execute { pool.close() }
            thread?.closeLoopPool()
            tenancy?.closePool()
        }
    }

    /// A tenant's configuration as its listener reads it at each accept, with
    /// the rate limiters its limits call for (new ones when the rates change).
    private final class LiveConfiguration: Sendable {
        struct Value: Sendable {
            var configuration: TenantConfiguration
            var connections: TokenBucket?
            var bandwidth: TokenBucket?
            /// HTTP mode: the tenant's request rate.
            var requests: TokenBucket?
            /// HTTP mode (nil in L4): its routing, the clusters its routes lead to, and whose turn it is in each.
            var targets: RouteTargets?
            /// Its TLS material as last read.
            var secrets: TenantSecrets
        }

        private let current: Mutex<Value>

        init(_ configuration: TenantConfiguration, secrets: TenantSecrets) { current = Mutex(Self.make(configuration, secrets: secrets)) }

        var value: Value { current.withLock { $0 } }

        /// Takes a new configuration. Existing limiters change their rates in
        /// place, so open connections follow the new limits too; a limit that is
        /// removed becomes unlimited for them.
        func update(_ configuration: TenantConfiguration, secrets: TenantSecrets) {
            current.withLock { value in
                let limits = configuration.limits
                var next = Self.make(configuration, secrets: secrets, carryingTurnsOf: value.targets)
                next.connections = Self.carry(value.connections, to: limits.connectionsPerSecond, or: next.connections)
                next.bandwidth = Self.carry(value.bandwidth, to: limits.bytesPerSecond, or: next.bandwidth)
                next.requests = Self.carry(value.requests, to: limits.requestsPerSecond, or: next.requests)
                value = next
            }
        }

        /// The limiter open connections hold, set to `rate` (unlimited when nil)
        /// and kept while there is a rate; `made` when there was none before.
        private static func carry(_ current: TokenBucket?, to rate: Int?, or made: TokenBucket?) -> TokenBucket? {
            guard let current else { return made }
            current.update(rate: rate ?? Int(Int32.max), burst: rate ?? Int(Int32.max))
            return rate == nil ? nil : current
        }

        /// New connections take this TLS material; open ones keep theirs.
        func update(secrets: TenantSecrets) {
            current.withLock { $0.secrets = secrets }
        }

        private static func make(_ configuration: TenantConfiguration, secrets: TenantSecrets, carryingTurnsOf previous: RouteTargets? = nil) -> Value {
            let targets: RouteTargets? = if case .http(let routing) = configuration.mode { RouteTargets(routing, carryingTurnsOf: previous) } else { nil }
            return Value(configuration: configuration,
                         connections: configuration.limits.connectionsPerSecond.map { TokenBucket(rate: $0, burst: $0) },
                         bandwidth: configuration.limits.bytesPerSecond.map { TokenBucket(rate: $0, burst: $0) },
                         requests: configuration.limits.requestsPerSecond.map { TokenBucket(rate: $0, burst: $0) },
                         targets: targets,
                         secrets: secrets)
        }
    }

    private struct State: Sendable {
        var configuration: ProxyConfiguration
        /// The TLS material of `configuration`'s tenants, by name.
        var secrets: [String: TenantSecrets]
        var tenants: [String: Tenant] = [:]
        var started = false
        var stopped = false
    }

    private let state: Mutex<State>
    private let connections = Mutex<[ObjectIdentifier: AdmittedConnection]>([:])
    private let configurationTurn = ConfigurationTurn()
    private let originalDestinations: OriginalDestinationSource
    /// Shares ``ProxyConfiguration/capacity`` among the tenants.
    private let scheduler: FairScheduler
    /// The loops tenants share, or nil for a thread of each tenant's own.
    private let sharedGroup: (any EventLoopGroup)?
    /// With a shared group: the splice loops beside its event loops.
    private let sharedSpliceLoops: SharedSpliceLoops?
    /// The nice values of the tenants' own threads.
    private let priorities: TenantPriorities
    private let logger: Logger
    private let metricsFactory: (any MetricsFactory)?
    /// The global gauges, with a metrics factory.
    private let gauges: ProxyGauges?
    private let exchangeRecorders: [any HTTPExchangeRecorder]

    /// Creates a proxy; nothing listens until ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: the tenants; checked now.
    ///   - originalDestinations: where redirected connections' original destinations come from.
    ///   - group: the event loops tenants share, spread over them; their CPU is then
    ///     shared by the loops, not by weight. The plaintext connections (L4 and HTTP) of
    ///     the tenants on one of its event loops are served on a splice loop beside it, which they share
    ///     too (a thread named `mesh-shared`, started with the first such connection
    ///     and stopped with the proxy). By default (nil) each tenant runs on an
    ///     event-loop thread of its own, which the kernel schedules by the tenant's
    ///     weight: the heaviest tenant's thread at the process's own nice value, one
    ///     level (a factor of 1.25 in the kernel's CPU weights) lower for each factor
    ///     of 1.25 less weight, at most 19. Only under contention: a tenant alone on a
    ///     CPU takes what it needs. A tenant far over its share of a contended CPU
    ///     while another waits is demoted to nice 19 until it is back under it
    ///     (``TenantStatistics/isDemoted``; the rules are in the DocC article). Raising
    ///     a thread's priority again needs `CAP_SYS_NICE`: without, a warning is logged
    ///     after a reweighting, and tenants are not demoted.
    ///   - logger: for the proxy's messages, with the tenant in the metadata.
    ///   - metrics: where the global gauges (``ProxyGauges``: `mesh_proxy_tenants`,
    ///     `mesh_proxy_exchanges_in_flight`, `mesh_proxy_exchanges_waiting`) and the per-tenant
    ///     metrics go (`mesh_proxy_connections_active`,
    ///     `mesh_proxy_connections_total{outcome}`, `mesh_proxy_bytes_total{direction}`,
    ///     `mesh_proxy_throttled_reads_total`, `mesh_proxy_http_requests_total` and
    ///     `mesh_proxy_http_request_duration_seconds`, each by `tenant`; and, for a tenant on
    ///     a thread of its own, `mesh_proxy_cpu_seconds_total`, updated each second); nil for none.
    ///   - exchanges: where every answered HTTP request is also recorded as a
    ///     MeshTelemetry exchange of reporter `proxy` — ``MeshTelemetry/HTTPMetrics``
    ///     (by source workload, the datapath's identity of the redirected client, and
    ///     the upstream's workload, in the same series as the exchanges the kernel
    ///     observes), ``MeshTelemetry/HTTPTracing`` (a span joining the request's
    ///     `traceparent`), ``MeshTelemetry/FlowLog``; none by default.
    public init(configuration: ProxyConfiguration, originalDestinations: OriginalDestinationSource = .socketOption,
                group: (any EventLoopGroup)? = nil, logger: Logger,
                metrics: (any MetricsFactory)? = nil, exchanges: [any HTTPExchangeRecorder] = []) throws(ProxyConfigurationError) {
        try configuration.validate()
        try Self.checkBindings(configuration, reading: originalDestinations)
        state = Mutex(State(configuration: configuration, secrets: try Self.loadSecrets(configuration)))
        let gauges = metrics.map { ProxyGauges(factory: $0) }
        var observe: (@Sendable (Int, Int) -> Void)?
        if let gauges { observe = { held, queued in gauges.exchanges(inFlight: held, waiting: queued) } }
        scheduler = FairScheduler(capacity: configuration.capacity, weights: configuration.weights, observe: observe)
        self.gauges = gauges
        self.originalDestinations = originalDestinations
        sharedGroup = group
        sharedSpliceLoops = group == nil ? nil : SharedSpliceLoops()
        priorities = TenantPriorities(logger: logger)
        self.logger = logger
        metricsFactory = metrics
        exchangeRecorders = exchanges
    }

    /// Binds the tenants' listeners and serves until cancelled or shut down
    /// gracefully; then stops accepting and drains.
    public func run() async throws {
        let (configuration, secrets) = state.withLock { ($0.configuration, $0.secrets) }
        let bound = try await bind(configuration.tenants, secrets: secrets)
        // Serving starts in a turn of its own: an `apply` meanwhile either stored its
        // configuration before (applied here) or comes after, to the serving proxy.
        await configurationTurn.wait()
        let started: Bool
        do {
            defer { configurationTurn.end() }
            started = try await startServing(bound, boundFrom: configuration)
        } catch {
            await stop(drainingFor: .zero)
            throw error
        }
        guard started else {
            await discard(bound)
            sharedSpliceLoops?.stop()
            return
        }
        // Tenants on threads of their own: their shares of the CPU are balanced each period.
        if sharedGroup == nil { await priorities.start() }
        await withGracefulShutdownHandler {
            try? await gracefulShutdown()
        } onGracefulShutdown: {
            self.stopAccepting()
        }
        // Demoted tenants drain at their weight's priority.
        await priorities.stop()
        await stop(drainingFor: state.withLock { $0.configuration.drainTimeout })
        logger.info("proxy stopped")
    }

    /// Replaces the tenants. Throws ``ProxyConfigurationError`` (and changes
    /// nothing) if the configuration is invalid, a new listener cannot be
    /// bound, another `apply` is still in progress (or ``run()`` is putting its
    /// listeners into service, and any configuration applied meanwhile), or the proxy has stopped.
    public func apply(_ configuration: ProxyConfiguration) async throws(ProxyConfigurationError) {
        try configuration.validate()
        try Self.checkBindings(configuration, reading: originalDestinations)
        guard configurationTurn.take() else {
            throw ProxyConfigurationError(tenant: nil, field: "configuration", reason: "is being changed by another apply; retry when it returns")
        }
        defer { configurationTurn.end() }
        try await applyInTurn(configuration)
    }

    /// In the configuration's turn: the tenants `bound` for `configuration`
    /// serve, and a configuration applied while they were being bound is
    /// applied. False (nothing serves) when the proxy stopped meanwhile;
    /// throws why that later configuration could not be applied.
    private func startServing(_ bound: [String: Tenant], boundFrom configuration: ProxyConfiguration) async throws(ProxyConfigurationError) -> Bool {
        let started = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.tenants = bound
            state.started = true
            return true
        }
        gauges?.serving(bound.count)
        guard started else { return false }
        configureTenantThreads()
        logger.info("proxy serving", metadata: ["tenants": "\(bound.keys.sorted())"])
        await startAccepting(bound.values.flatMap { $0.listeners.values })
        let latest = state.withLock { $0.configuration }
        if latest != configuration { try await applyInTurn(latest) }
        return true
    }

    /// ``apply(_:)`` of a valid `configuration`, in the caller's turn.
    private func applyInTurn(_ configuration: ProxyConfiguration) async throws(ProxyConfigurationError) {
        let current = state.withLock { $0 }
        guard !current.stopped else {
            throw ProxyConfigurationError(tenant: nil, field: "configuration", reason: "cannot change: the proxy has stopped")
        }
        // Certificates are read first: a file that cannot be used changes nothing.
        let secrets = try Self.loadSecrets(configuration)
        guard current.started else {
            // Not serving yet: run() applies it once its listeners are bound.
            state.withLock {
                $0.configuration = configuration
                $0.secrets = secrets
            }
            return
        }
        // Bind what is new first — new tenants, and new listeners of tenants that stay — so that
        // if any bind fails, nothing changed. A tenant that stays keeps its counters, limiters,
        // thread and pools (its open connections count, whichever listener they came through).
        let added = configuration.tenants.filter { current.tenants[$0.name] == nil }
        // A listener another tenant still holds cannot be bound until that tenant lets it go:
        // the move takes two applies (binding first is what keeps a failed apply harmless).
        let holders = Dictionary(uniqueKeysWithValues: current.tenants.flatMap { name, tenant in tenant.listeners.keys.map { ($0, name) } })
        for tenant in configuration.tenants {
            for (index, listener) in tenant.listeners.enumerated() {
                guard let holder = holders[listener], holder != tenant.name else { continue }
                throw ProxyConfigurationError(tenant: tenant.name, field: TenantConfiguration.listenerField(at: index),
                                              reason: "\(listener) is still tenant \(holder)'s: apply its removal from there first")
            }
        }
        // The new shares apply before the new listeners accept anything.
        scheduler.update(capacity: configuration.capacity, weights: configuration.weights)
        var bound: [String: Tenant] = [:], opened: [String: [Endpoint: any Channel]] = [:]
        do {
            bound = try await bind(added, secrets: secrets)
            for tenant in configuration.tenants {
                guard let staying = current.tenants[tenant.name] else { continue }
                let new = tenant.listeners.filter { staying.listeners[$0] == nil }
                if !new.isEmpty { opened[tenant.name] = try await listen(on: new, of: tenant, serving: staying) }
            }
        } catch {
            await discard(bound, opened)
            scheduler.update(capacity: current.configuration.capacity, weights: current.configuration.weights)
            throw error
        }
        let wanted = Dictionary(uniqueKeysWithValues: configuration.tenants.map { ($0.name, $0) })
        let changes: (retired: [Tenant], closing: [any Channel])? = state.withLock { state in
            // Stopped while binding: the new listeners must not outlive the proxy.
            guard !state.stopped else { return nil }
            var retired: [Tenant] = [], closing: [any Channel] = []
            for (name, tenant) in state.tenants where wanted[name] == nil {
                retired.append(tenant)
                state.tenants[name] = nil
            }
            for (name, tenant) in bound { state.tenants[name] = tenant }
            for (name, configuration) in wanted {
                guard var tenant = state.tenants[name] else { continue }
                // Its new listeners join it, and those no longer wanted stop accepting.
                tenant.listeners.merge(opened[name] ?? [:]) { _, _ in preconditionFailure("a listener opened for \(name) that it had") }
                for (endpoint, listener) in tenant.listeners where !configuration.listeners.contains(endpoint) {
                    closing.append(listener)
                    tenant.listeners[endpoint] = nil
                }
                // Limits and upstream change in place for new connections (only now that every bind has succeeded).
                tenant.configuration = configuration
                tenant.live.update(configuration, secrets: secrets[name] ?? .none)
                tenant.counters.buffers.update(configuration.limits)
                state.tenants[name] = tenant
            }
            state.configuration = configuration
            state.secrets = secrets
            gauges?.serving(state.tenants.count)
            return (retired, closing)
        }
        guard let changes else {
            await discard(bound, opened)
            scheduler.update(capacity: current.configuration.capacity, weights: current.configuration.weights)
            throw ProxyConfigurationError(tenant: nil, field: "configuration", reason: "cannot change: the proxy stopped meanwhile")
        }
        // Listeners no longer wanted, and removed tenants', stop accepting at once (a stop from now
        // on no longer sees them); their open connections run on (a removed tenant's thread until
        // the last of them closes).
        let stopping = changes.closing + changes.retired.flatMap(\.listeners.values)
        for listener in stopping { listener.close(promise: nil) }
        configureTenantThreads()
        await startAccepting(bound.values.flatMap { $0.listeners.values } + opened.values.flatMap(\.values))
        for listener in stopping { try? await listener.closeFuture.get() }
        for tenant in changes.retired { tenant.retire() }
        logger.info("proxy configuration applied", metadata: ["tenants": "\(wanted.keys.sorted())"])
    }

    /// Reads every tenant's certificate and key files again: new connections
    /// get the new certificates, open ones keep theirs. If any file cannot be
    /// used, the error names it and nothing changes.
    public func reloadCertificates() throws(ProxyConfigurationError) {
        let configuration = state.withLock { $0.configuration }
        let secrets = try Self.loadSecrets(configuration)
        state.withLock { state in
            // Changed meanwhile by apply, which read the files itself.
            guard state.configuration == configuration else { return }
            state.secrets = secrets
            for (name, tenant) in state.tenants { tenant.live.update(secrets: secrets[name] ?? .none) }
        }
        logger.info("proxy certificates reloaded")
    }

    private static func loadSecrets(_ configuration: ProxyConfiguration) throws(ProxyConfigurationError) -> [String: TenantSecrets] {
        var secrets: [String: TenantSecrets] = [:]
        for tenant in configuration.tenants { secrets[tenant.name] = try TenantSecrets.load(tenant) }
        return secrets
    }

    /// A tenant's counters, or nil for an unknown tenant.
    public func statistics(_ tenant: String) -> TenantStatistics? {
        guard let found = state.withLock({ $0.tenants[tenant] }) else { return nil }
        var statistics = found.counters.snapshot
        statistics.cpuTime = found.thread?.cpuTime
        statistics.isDemoted = priorities.isDemoted(tenant)
        return statistics
    }

    // MARK: Listening

    /// Binds new `tenants` (not accepting yet), each on a thread of its own or
    /// a loop of the shared group; all or none: a failure closes what was bound.
    private func bind(_ tenants: [TenantConfiguration], secrets: [String: TenantSecrets]) async throws(ProxyConfigurationError) -> [String: Tenant] {
        var bound: [String: Tenant] = [:]
        for configuration in tenants {
            let counters = TenantCounters(tenant: configuration.name, factory: metricsFactory)
            counters.buffers.update(configuration.limits)
            // A tenant's listeners and its connections share one event loop (its own
            // thread, or one of the shared group's): NIO then admits an accepted
            // connection in the same tick as the accept, so closing a listener for
            // a drain never races with (and closes) a connection it has just accepted.
            let thread: TenantThread? = sharedGroup == nil ? await TenantThread.start(for: configuration.name, reportingTo: metricsFactory) : nil
            let loop = thread?.eventLoop ?? sharedGroup!.next()
            let tenancy = thread == nil ? sharedSpliceLoops?.tenancy(beside: loop) : nil
            var tenant = Tenant(configuration: configuration, listeners: [:], counters: counters,
                                live: LiveConfiguration(configuration, secrets: secrets[configuration.name] ?? .none),
                                pool: UpstreamPool(eventLoop: loop), thread: thread, tenancy: tenancy)
            do {
                tenant.listeners = try await listen(on: configuration.listeners, of: configuration, serving: tenant)
            } catch {
                bound[configuration.name] = tenant
                await discard(bound)
                throw error
            }
            bound[configuration.name] = tenant
        }
        return bound
    }

    /// Binds `endpoints`, listeners of tenant `configuration`, for `tenant`
    /// (its connections admitted on its loop, under its counters and live
    /// configuration), not accepting yet; all or none: a failure closes those
    /// bound, and the error names the listener's field.
    private func listen(on endpoints: [Endpoint], of configuration: TenantConfiguration,
                        serving tenant: Tenant) async throws(ProxyConfigurationError) -> [Endpoint: any Channel] {
        let (live, counters, pool, thread, host) = (tenant.live, tenant.counters, tenant.pool, tenant.thread, tenant.loopHost)
        var listeners: [Endpoint: any Channel] = [:]
        for endpoint in endpoints {
            do {
                listeners[endpoint] = try await ServerBootstrap(group: pool.eventLoop, childGroup: pool.eventLoop)
                    // Accepting waits until the configuration has applied (``startAccepting(_:)``): a
                    // connection queued on a listener of one that then fails is refused as the listener closes.
                    .serverChannelOption(.autoRead, value: false)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .serverChannelOption(.backlog, value: 1_024)
                    .childChannelOption(.allowRemoteHalfClosure, value: true)
                    .childChannelOption(.autoRead, value: false)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelInitializer { [self] channel in
                        admit(channel, tenant: live.value, counters: counters, pool: pool, thread: thread, host: host)
                        return channel.eventLoop.makeSucceededVoidFuture()
                    }
                    .bind(to: endpoint.socketAddress)
                    .get()
            } catch {
                for listener in listeners.values { try? await listener.close() }
                throw ProxyConfigurationError(tenant: configuration.name, field: TenantConfiguration.listenerField(at: configuration.listeners.firstIndex(of: endpoint) ?? 0),
                                              reason: "cannot listen on \(endpoint): \(error)")
            }
        }
        return listeners
    }

    /// Lets `listeners`, now serving, accept (they are bound not accepting).
    private func startAccepting(_ listeners: [any Channel]) async {
        for listener in listeners { try? await listener.setOption(.autoRead, value: true).get() }
    }

    /// Closes tenants just bound and not taken into use, ending the threads
    /// started for them, and listeners just `opened` for tenants that stay.
    private func discard(_ bound: [String: Tenant], _ opened: [String: [Endpoint: any Channel]] = [:]) async {
        for tenant in bound.values {
            for listener in tenant.listeners.values { try? await listener.close() }
            tenant.retire()
        }
        for listener in opened.values.flatMap(\.values) { try? await listener.close() }
    }

    /// Sets each tenant's thread's nice value by its weight beside the heaviest
    /// tenant's, from the process's own nice value (demoted tenants lower),
    /// and its splice loop's polling budget: for the tenants and configuration
    /// as they are now (read under the lock, so that a later change is never
    /// overtaken by an earlier one).
    private func configureTenantThreads() {
        state.withLock { state in
            priorities.update(state.tenants.compactMapValues { tenant in tenant.thread.map { (tenant.configuration.weight, $0) } })
            var tenancies: [(tenancy: SharedSpliceLoops.Tenancy, budget: Duration)] = []
            for tenant in state.tenants.values {
                let budget = state.configuration.spliceSpin(for: tenant.configuration.mode)
                tenant.thread?.spinSplices(upTo: budget)
                if let tenancy = tenant.tenancy { tenancies.append((tenancy, budget)) }
            }
            sharedSpliceLoops?.spin(upTo: tenancies, otherwise: state.configuration.spliceSpin)
        }
    }

    /// Tenant `name`'s splice loop (its own, or the shared one beside its
    /// listener's event loop), nil while none runs (no connection was spliced or served on it yet).
    func spliceLoop(of name: String) -> SpliceLoop? {
        state.withLock { $0.tenants[name]?.loopHost }?.runningSpliceLoop
    }

    /// Stops accepting, waits up to `timeout` for open connections to finish
    /// and closes the rest; the listeners are closed when it returns (their
    /// ports can be bound again), and each tenant's thread ends with its last connection.
    private func stop(drainingFor timeout: Duration) async {
        stopAccepting()
        await drain(timeout: timeout)
        let tenants = state.withLock { Array($0.tenants.values) }
        for listener in tenants.flatMap(\.listeners.values) { try? await listener.closeFuture.get() }
        for tenant in tenants { tenant.thread?.retire() }
        sharedSpliceLoops?.stop()
    }

    private func stopAccepting() {
        let tenants = state.withLock { state -> [Tenant] in
            state.stopped = true
            return Array(state.tenants.values)
        }
        for tenant in tenants {
            for listener in tenant.listeners.values { listener.close(promise: nil) }
            tenant.closePools()
        }
    }

    /// Asks open connections to close gracefully (an HTTP connection closes
    /// between requests), waits for them to finish, up to `timeout`; closes the rest.
    private func drain(timeout: Duration) async {
        for connection in connections.withLock({ Array($0.values) }) { connection.closeGracefully() }
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline, !Task.isCancelled, !connections.withLock({ $0.isEmpty }) {
            do { try await Task.sleep(for: .milliseconds(20)) } catch { break }   // cancelled: close what is left now
        }
        let remaining = connections.withLock { Array($0.values) }
        for connection in remaining { connection.close() }
        if !remaining.isEmpty { logger.info("proxy drain timed out", metadata: ["closed": "\(remaining.count)"]) }
    }

    // MARK: One connection

    /// Admits an accepted connection under its tenant's limit, then connects it
    /// upstream; `thread` is the tenant's own, if it has one, and `host` where its plaintext connections leave NIO for.
    private func admit(_ client: any Channel, tenant live: LiveConfiguration.Value, counters: TenantCounters, pool: UpstreamPool,
                       thread: TenantThread?, host: (any SpliceLoopHost)?) {
        let tenant = live.configuration
        // The datapath's record of the connection, read once: for a tenant bound to its datapath tenant before
        // anything else (another tenant's connection takes nothing of this one's limits; a record that cannot
        // be read refuses it: the binding fails closed), for others once admitted, where anything needs it.
        var record: RedirectedConnection?
        if let expected = tenant.datapathTenant {
            guard case .success(let read) = datapathRecord(of: client, tenant: tenant.name) else {
                counters.record(.noOriginalDestination)
                client.close(promise: nil)
                return
            }
            if let read, read.sourceTenant != expected {
                counters.record(.foreignTenant)
                logger.debug("connection of another tenant's workload refused",
                             metadata: ["tenant": "\(tenant.name)", "recordedTenant": "\(read.sourceTenant)", "identity": "\(read.sourceIdentity)"])
                client.close(promise: nil)
                return
            }
            record = read
        }
        if let maximum = tenant.limits.maxConnections, counters.active.load(ordering: .relaxed) >= maximum {
            counters.record(.refusedLimit)
            client.close(promise: nil)
            return
        }
        if let rate = live.connections, !rate.tryTake() {
            counters.record(.refusedRate)
            client.close(promise: nil)
            return
        }
        // An L4 connection is one exchange for its whole life; HTTP takes one per request.
        let spliced = tenant.mode == .tcp
        if spliced, scheduler.acquire(tenant.name, canWait: false, whenGranted: { _ in }) != .admitted {
            counters.record(.shed)
            client.close(promise: nil)
            return
        }
        counters.record(.accepted)
        // (Its identity is for HTTP authorization and reports, its destination for clusters or an L4 upstream that go there.)
        let needsRecord = if case .originalDestination = tenant.upstream { true } else { live.targets != nil }
        if tenant.datapathTenant == nil, needsRecord { record = try? datapathRecord(of: client, tenant: tenant.name).get() }
        client.setWriteBufferLimit(tenant.limits.maxBufferedBytes)
        thread?.connectionOpened()
        let connection = AdmittedConnection(client) { [self] connection in
            if spliced { scheduler.release(tenant.name) }
            counters.closed()
            _ = connections.withLock { $0.removeValue(forKey: ObjectIdentifier(connection)) }
            thread?.connectionClosed()
        }
        connections.withLock { $0[ObjectIdentifier(connection)] = connection }
        connection.watchChannel()
        // Once the connection is plaintext (at once, or after its TLS handshake): HTTP or the splice.
        let serve: TLSHandshakeGate.Established = { [self, record] client, spiffeID in
            // Plaintext connections of a tenant on its own thread are spliced, or served in HTTP,
            // on its splice loop; those of a shared group's tenant on the shared splice loop
            // beside its listener's event loop. Connections terminated here stay in NIO, with their TLS.
            let plaintext = live.secrets.termination == nil
            if let targets = live.targets {
                var sources = Set<SourceIdentity>()
                if let spiffeID { sources.insert(.spiffe(spiffeID)) }
                if let record { sources.insert(.workload(record.sourceIdentity)) }
                // Where the connection was going, for clusters that go there: the datapath's record,
                // or getsockopt's answer. (Both complete at once, on the connection's event loop, so a
                // plaintext client's first bytes wait in its socket: it reads nothing until served.)
                let destination = targets.reachesOriginalDestination
                    ? originalDestination(of: client, record: record, tenant: tenant.name)
                    : client.eventLoop.makeSucceededFuture(record?.originalDestination)
                return destination.map { [self, sources] destination in
                    let local = client.localAddress.flatMap(Endpoint.init) ?? tenant.listener
                    let reporting = exchangeRecorders.isEmpty ? nil : Optional(
                        ExchangeReporting(recorders: exchangeRecorders, tenant: tenant.name, destination: destination ?? local,
                                          client: client.remoteAddress.flatMap(Endpoint.init) ?? local, sourceIdentity: record?.sourceIdentity ?? 0))
                    serveHTTP(client, targets: targets, live: live, counters: counters, pool: pool, sources: sources, reporting: reporting,
                              originalDestination: destination, connection: connection, handingOffTo: plaintext ? host : nil)
                }
            }
            return splice(client, live: live, counters: counters, record: record, handingOffTo: plaintext ? host.map { ($0, connection) } : nil)
        }
        if let termination = live.secrets.termination {
            // (Its handshake gate holds what arrives while the upstream connects.) NIO reads it all its life.
            Self.readInSmallSteps([client], buffers: counters.buffers)
            terminateTLS(client, termination, tenant: tenant.name, counters: counters, then: serve)
        } else {
            // What a client sends before its splice is in place waits in the hold.
            if spliced, (try? client.pipeline.syncOperations.addHandler(InputHold())) == nil {
                client.close(promise: nil)
                return
            }
            _ = serve(client, nil)
        }
    }

    /// L4: the connection's destination is found (from its datapath `record`,
    /// if the proxy reads them) and the connection spliced to it (on the
    /// splice loop of `handOff`'s host); the future succeeds once the splice is in place.
    private func splice(_ client: any Channel, live: LiveConfiguration.Value, counters: TenantCounters, record: RedirectedConnection?,
                        handingOffTo handOff: (any SpliceLoopHost, AdmittedConnection)?) -> EventLoopFuture<Void> {
        let tenant = live.configuration
        let destination: EventLoopFuture<Endpoint?>
        switch tenant.upstream {
        case .fixed(let endpoint): destination = client.eventLoop.makeSucceededFuture(endpoint)
        case .originalDestination: destination = originalDestination(of: client, record: record, tenant: tenant.name)
        }
        return destination.flatMapResult { [self] target -> Result<SocketAddress, any Error> in
            guard let target else {
                counters.record(.noOriginalDestination)
                logger.debug("no original destination", metadata: ["tenant": "\(tenant.name)"])
                client.close(promise: nil)
                return .failure(ChannelError.ioOnClosedChannel)
            }
            return .success(target.socketAddress)
        }.flatMap { [self] address in
            connectUpstream(client, to: address, live: live, counters: counters, handingOffTo: handOff)
        }
    }

    /// Refuses a tenant bound to its datapath tenant when the proxy reads no
    /// datapath records (`source` is ``OriginalDestinationSource/socketOption``,
    /// which tells no tenant): the binding would check nothing.
    private static func checkBindings(_ configuration: ProxyConfiguration, reading source: OriginalDestinationSource) throws(ProxyConfigurationError) {
        guard case .socketOption = source, let bound = configuration.tenants.first(where: { $0.datapathTenant != nil }) else { return }
        throw ProxyConfigurationError(tenant: bound.name, field: "datapathTenant",
                                      reason: "needs the datapath's records (originalDestinations .datapath or .pinnedRecords): getsockopt tells no tenant")
    }

    /// The datapath's record of `client`, a connection of `tenant`: nil when
    /// the proxy does not read the datapath's records or the connection was
    /// not redirected (or its record is gone); the failure (logged) when the
    /// table cannot be read — the connection is then served without the
    /// datapath's identity (authorization sees an unidentified source) and
    /// destination, or refused by a tenant bound to its datapath tenant.
    private func datapathRecord(of client: any Channel, tenant: String) -> Result<RedirectedConnection?, BPFError> {
        let result = Result { () throws(BPFError) in try originalDestinations.record(of: client) }
        if case .failure(let error) = result {
            logger.warning("datapath record unreadable", metadata: ["tenant": "\(tenant)", "error": "\(error)"])
        }
        return result
    }

    /// The original destination of `client`, a connection of `tenant` whose
    /// datapath record is `record`: nil when it was not redirected, or
    /// (logged) when it cannot be read.
    private func originalDestination(of client: any Channel, record: RedirectedConnection?, tenant: String) -> EventLoopFuture<Endpoint?> {
        originalDestinations.resolve(client, record: record).flatMapErrorThrowing { [logger] error in
            logger.warning("original destination unreadable", metadata: ["tenant": "\(tenant)", "error": "\(error)"])
            return nil
        }
    }

    /// TLS termination: the client's server name picks the tenant's
    /// certificate, the handshake runs, the client's identity is checked
    /// (mutual TLS); then `serve` gets the plaintext connection.
    private func terminateTLS(_ client: any Channel, _ termination: TerminationContexts, tenant: String, counters: TenantCounters,
                              then serve: @escaping TLSHandshakeGate.Established) {
        let logger = logger
        let gate = TLSHandshakeGate(
            allowedIdentities: termination.settings.clientAuthentication.map(\.allowedIdentities),
            timeout: termination.settings.handshakeTimeout, established: serve,
            refused: { reason in
                counters.record(.tlsRefused)
                logger.debug("TLS refused", metadata: ["tenant": "\(tenant)", "reason": "\(reason)"])
            })
        let sni = SNIHandler { result in
            let name: String? = if case .hostname(let host) = result { host } else { nil }
            guard let context = termination.context(for: name) else {
                let refusal = TLSRefusal.noCertificate(serverName: name)
                client.pipeline.fireErrorCaught(refusal)
                return client.eventLoop.makeFailedFuture(refusal)
            }
            return client.eventLoop.makeCompletedFuture {
                try client.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context), position: .before(gate))
            }
        }
        do {
            try client.pipeline.syncOperations.addHandlers([ByteToMessageHandler(sni), gate])
        } catch {
            client.close(promise: nil)
            return
        }
        // The handshake needs reading; the gate stops it again once the handshake is done.
        client.setAutoRead(true)
    }

    /// HTTP mode: the client connection gets the routing handler (which parses
    /// heads itself and watches for idleness) — on the splice loop of `host`
    /// when there is one and no cluster is reached over TLS, else on its
    /// channel. A handler that starts once a drain has begun closes gracefully at once.
    private func serveHTTP(_ client: any Channel, targets: RouteTargets, live: LiveConfiguration.Value, counters: TenantCounters, pool: UpstreamPool,
                           sources: Set<SourceIdentity>, reporting: ExchangeReporting?, originalDestination: Endpoint?, connection: AdmittedConnection,
                           handingOffTo host: (any SpliceLoopHost)?) {
        let tenant = live.configuration
        let (scheduler, logger, requests, bandwidth, upstreamTLS) = (scheduler, logger, live.requests, live.bandwidth, live.secrets.clusters)
        let handler: @Sendable (UpstreamPool) -> HTTPProxyHandler = { pool in
            HTTPProxyHandler(targets: targets, pool: pool, connectTimeout: TimeAmount(tenant.connectTimeout),
                             counters: counters, scheduler: scheduler, tenant: tenant.name,
                             upstreamTLS: upstreamTLS, sources: sources, requestRate: requests, bandwidth: bandwidth,
                             bufferLimit: tenant.limits.maxBufferedBytes, reporting: reporting,
                             idleTimeout: TimeAmount(tenant.idleTimeout), originalDestination: originalDestination, logger: logger)
        }
        if let host, upstreamTLS.isEmpty, let (loop, loopPool) = httpLoop(of: host, tenant: tenant.name) {
            move(client, to: loop, connection: connection, tenant: tenant, counters: counters) { handler(loopPool) }
            return
        }
        let served = handler(pool)
        // A plaintext client kept on NIO reads in small steps from now on (a TLS one has since its admission).
        if live.secrets.termination == nil { Self.readInSmallSteps([client], buffers: counters.buffers) }
        do {
            try client.pipeline.syncOperations.addHandler(served)
        } catch {
            client.close(promise: nil)
            return
        }
        client.setAutoRead(true)
        if connection.isDraining { served.closeGracefully() }
    }

    /// The tenant's splice loop and its HTTP upstream pool; nil (the
    /// connection is then served on its channel, and a warning says why) when
    /// the loop cannot be started.
    private func httpLoop(of host: any SpliceLoopHost, tenant: String) -> (SpliceLoop, UpstreamPool)? {
        do {
            return try host.httpLoop()
        } catch {
            logger.warning("splice loop cannot start; serving HTTP on the event loop", metadata: ["tenant": "\(tenant)", "error": "\(error)"])
            return nil
        }
    }

    /// Moves an HTTP client connection onto `loop`: its socket is duplicated
    /// to the loop, served there by the handler `makeHandler` makes, and the
    /// channel closes (the socket lives on in the loop's descriptor). When the
    /// socket cannot be duplicated or the move is refused (a drain closed the
    /// connection meanwhile, or the loop stopped) the connection closes.
    private func move(_ client: any Channel, to loop: SpliceLoop, connection: AdmittedConnection, tenant: TenantConfiguration,
                      counters: TenantCounters, handler makeHandler: @escaping @Sendable () -> HTTPProxyHandler) {
        let descriptor: Int32
        do {
            descriptor = try Self.duplicateSocket(of: client)
        } catch {
            logger.warning("connection cannot move to the splice loop", metadata: ["tenant": "\(tenant.name)", "error": "\(error)"])
            client.close(promise: nil)
            return
        }
        let (remote, limit, logger, buffers) = (client.remoteAddress, tenant.limits.maxBufferedBytes, logger, counters.buffers)
        let moved = connection.move(to: loop) { key in
            do {
                let socket = try LoopSocket.adopting(descriptor, key: key, remoteAddress: remote, on: loop, writeBufferLimit: limit, buffers: buffers)
                socket.whenClosed = { connection.socketEnded() }
                let handler = makeHandler()
                handler.attach(socket)
                socket.start(handler)
                if connection.isDraining { handler.closeGracefully() }
            } catch {
                logger.warning("connection cannot be served on the splice loop", metadata: ["tenant": "\(tenant.name)", "error": "\(error)"])
                connection.socketEnded()
            }
        }
        if !moved { _ = Glibc.close(descriptor) }
        client.close(promise: nil)
    }

    /// A duplicate (close-on-exec) of `channel`'s socket, which outlives the channel's close.
    private static func duplicateSocket(of channel: any Channel) throws -> Int32 {
        let copy = try channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { socket in
            fcntl(socket, F_DUPFD_CLOEXEC, 0)
        }
        guard let copy else { throw ChannelError.operationUnsupported }
        guard copy >= 0 else { throw Errno.current }
        return copy
    }

    /// Connects to the upstream and splices the two — on the tenant's splice
    /// loop with `handOff`, else with ``SpliceHandler``s; the future succeeds once the splice is in place.
    private func connectUpstream(_ client: any Channel, to address: SocketAddress, live: LiveConfiguration.Value,
                                 counters: TenantCounters, handingOffTo handOff: (any SpliceLoopHost, AdmittedConnection)?) -> EventLoopFuture<Void> {
        let (tenant, bandwidth) = (live.configuration, live.bandwidth)
        let water = tenant.limits.maxBufferedBytes
        return ClientBootstrap(group: client.eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(limit: water))
            .connectTimeout(TimeAmount(tenant.connectTimeout))
            .connect(to: address)
            .flatMapErrorThrowing { [logger] error -> any Channel in
                counters.record(.upstreamFailed)
                logger.debug("upstream unreachable", metadata: ["tenant": "\(tenant.name)", "upstream": "\(address)", "error": "\(error)"])
                client.close(promise: nil)
                throw error
            }
            .flatMapThrowing { [self] upstream in
                if let (host, connection) = handOff, let loop = spliceLoop(of: host, tenant: tenant.name) {
                    try move(client, upstream, to: loop, connection: connection, tenant: tenant, bandwidth: bandwidth, counters: counters)
                    return
                }
                // Both channels are on the client's event loop: splice them there.
                let (fromClient, fromUpstream) = SpliceHandler.pair(
                    countingFirst: { counters.bytesFromClient($0) }, second: { counters.bytesFromUpstream($0) },
                    bandwidth: bandwidth, throttled: { counters.throttledRead() }, buffers: counters.buffers,
                    failed: { [logger = self.logger] error in logger.debug("spliced connection failed", metadata: ["tenant": "\(tenant.name)", "error": "\(error)"]) },
                    idleTimeout: TimeAmount(tenant.idleTimeout))
                do {
                    // (A client whose TLS ends here reads so since its admission.)
                    Self.readInSmallSteps(live.secrets.termination == nil ? [client, upstream] : [upstream], buffers: counters.buffers)
                    try client.pipeline.syncOperations.addHandler(fromClient)
                    try upstream.pipeline.syncOperations.addHandler(fromUpstream)
                    InputHold.open(client)
                } catch {
                    client.close(promise: nil)
                    upstream.close(promise: nil)
                    throw error
                }
                // Reading starts now, and runs on by itself; the splice handlers
                // hold back a side's reads while its partner cannot take more.
                client.setAutoRead(true)
                upstream.setAutoRead(true)
            }
    }

    /// Where NIO reads the connections of a tenant that reads in small steps
    /// (``TenantBuffers/readsInSmallSteps``), it reads them so, from small
    /// receive buffers (``Channel/readInSmallSteps()``). (A splice loop reads in small steps itself.)
    private static func readInSmallSteps(_ channels: [any Channel], buffers: TenantBuffers) {
        guard buffers.readsInSmallSteps else { return }
        for channel in channels { channel.readInSmallSteps() }
    }

    /// The tenant's splice loop; nil (the splice then stays in NIO, and a
    /// warning says why) when it cannot be started.
    private func spliceLoop(of host: any SpliceLoopHost, tenant: String) -> SpliceLoop? {
        do {
            return try host.spliceLoop()
        } catch {
            logger.warning("splice loop cannot start; splicing on the event loop", metadata: ["tenant": "\(tenant)", "error": "\(error)"])
            return nil
        }
    }

    /// Moves a connection and its upstream onto `loop`: their sockets are
    /// duplicated to the loop, then the channels close (the sockets live on
    /// in the loop's descriptors). Throws, closing both, when a socket cannot
    /// be duplicated or the move is refused (a drain closed the connection
    /// meanwhile, or the loop stopped: the connection then ends on its channel).
    private func move(_ client: any Channel, _ upstream: any Channel, to loop: SpliceLoop, connection: AdmittedConnection,
                      tenant: TenantConfiguration, bandwidth: TokenBucket?, counters: TenantCounters) throws {
        var sockets: [Int32] = []
        do {
            for channel in [client, upstream] { sockets.append(try Self.duplicateSocket(of: channel)) }
        } catch {
            for socket in sockets { _ = Glibc.close(socket) }
            logger.warning("connection cannot move to the splice loop", metadata: ["tenant": "\(tenant.name)", "error": "\(error)"])
            client.close(promise: nil)
            upstream.close(promise: nil)
            throw error
        }
        let logger = logger
        let request = SpliceRequest(
            client: sockets[0], upstream: sockets[1],
            countFromClient: { counters.bytesFromClient($0) }, countFromUpstream: { counters.bytesFromUpstream($0) },
            bandwidth: bandwidth, throttled: { counters.throttledRead() }, buffers: counters.buffers,
            failed: { error in logger.debug("spliced connection failed", metadata: ["tenant": "\(tenant.name)", "error": "\(error)"]) },
            ended: { connection.pairEnded() },
            idleTimeout: tenant.idleTimeout, maxBufferedBytes: tenant.limits.maxBufferedBytes, heldFromClient: InputHold.takeBytes(client))
        let moved = connection.move(to: loop, splicing: request)
        if !moved { for socket in sockets { _ = Glibc.close(socket) } }
        client.close(promise: nil)
        upstream.close(promise: nil)
        if !moved { throw ChannelError.ioOnClosedChannel }
    }
}
