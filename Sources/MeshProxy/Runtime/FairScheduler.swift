import Synchronization

/// Shares the proxy's exchanges (``ProxyCapacity``) among tenants by weight;
/// without a capacity, it only counts them and admits all.
///
/// A tenant is admitted at once while it holds fewer exchanges than its
/// guaranteed share, or while the proxy holds fewer than its capacity.
/// Otherwise it may wait: each exchange that ends goes to the waiting tenant
/// with the fewest exchanges per weight (the longest-waiting one among
/// equals), and within a tenant waiters go first come, first served. Grants
/// are delivered outside the lock, on whatever thread ended the exchange;
/// receivers hop to their own event loop.
final class FairScheduler: Sendable {
    /// A place in a tenant's queue, to give up with ``cancel(_:)``.
    struct Ticket: Hashable, Sendable {
        let tenant: String
        let id: UInt64
    }

    /// What ``acquire(_:canWait:whenGranted:)`` decided.
    enum Admission: Equatable {
        /// An exchange is held now; ``release(_:)`` gives it back.
        case admitted
        /// Waiting: `whenGranted` runs once an exchange is held, unless cancelled first.
        case queued(Ticket)
        /// Neither admitted nor allowed to wait.
        case shed
    }

    /// Runs once the queued request holds its exchange, with the ticket it waited with.
    typealias Grant = @Sendable (Ticket) -> Void

    private struct Waiter {
        let id: UInt64
        let grant: Grant
    }

    /// A grant to deliver once the lock is released.
    private typealias Delivery = (grant: Grant, ticket: Ticket)

    private struct TenantState {
        var weight: Int
        /// Exchanges the tenant is guaranteed; 0 once the tenant was removed.
        var share: Int
        var inFlight = 0
        var waiting: [Waiter] = []

        /// Takes an exchange if the tenant may hold one now (true), else queues
        /// `waiter` if there is one and room in the queue (false); nil: shed.
        mutating func admit(proxyHasRoom: Bool, orQueue waiter: Waiter?, maxQueued: Int) -> Bool? {
            if inFlight < share || (proxyHasRoom && waiting.isEmpty) {
                inFlight += 1
                return true
            }
            guard let waiter, waiting.count < maxQueued else { return nil }
            waiting.append(waiter)
            return false
        }
    }

    private struct State {
        var capacity: ProxyCapacity?
        var tenants: [String: TenantState] = [:]
        var inFlight = 0
        /// Waiters of all tenants.
        var waiting = 0
        var nextID: UInt64 = 0

        var limit: Int { capacity?.maxConcurrentExchanges ?? .max }
    }

    private let state: Mutex<State>
    /// Told the exchanges held and waiting in all after every change.
    private let observe: (@Sendable (_ inFlight: Int, _ waiting: Int) -> Void)?

    /// Creates a scheduler for tenants with these weights; `observe` hears the
    /// exchanges held and waiting in all after every change (for gauges).
    init(capacity: ProxyCapacity?, weights: [String: Int], observe: (@Sendable (_ inFlight: Int, _ waiting: Int) -> Void)? = nil) {
        state = Mutex(State(capacity: capacity))
        self.observe = observe
        update(capacity: capacity, weights: weights)
    }

    /// Takes a new capacity and set of tenants. Exchanges held stay counted;
    /// a removed tenant keeps its waiters (granted only from idle capacity) and
    /// is forgotten once it holds and awaits nothing.
    func update(capacity: ProxyCapacity?, weights: [String: Int]) {
        let grants = state.withLock { state -> [Delivery] in
            state.capacity = capacity
            let total = weights.values.reduce(0, +)
            for name in Set(state.tenants.keys).union(weights.keys) {
                var tenant = state.tenants[name] ?? TenantState(weight: 1, share: 0)
                if let weight = weights[name] {
                    tenant.weight = weight
                    tenant.share = capacity.map { max(1, $0.maxConcurrentExchanges * weight / max(total, 1)) } ?? .max
                } else {
                    tenant.share = 0
                }
                state.tenants[name] = tenant
            }
            let grants = Self.grantWaiting(&state)
            observe?(state.inFlight, state.waiting)
            return grants
        }
        for delivery in grants { delivery.grant(delivery.ticket) }
    }

    /// Asks for an exchange for `tenant`.
    func acquire(_ tenant: String, canWait: Bool, whenGranted: @escaping Grant) -> Admission {
        state.withLock { state in
            // A tenant not (or no longer) configured has no share: it may only borrow.
            // (Changed in place: a copy would copy its queue with it.)
            let room = state.inFlight < state.limit
            let waiter = canWait ? Waiter(id: state.nextID + 1, grant: whenGranted) : nil
            let maxQueued = state.capacity?.maxQueuedPerTenant ?? 0
            let admitted = state.tenants[tenant, default: TenantState(weight: 1, share: 0)]
                .admit(proxyHasRoom: room, orQueue: waiter, maxQueued: maxQueued)
            guard let admitted else {
                if let index = state.tenants.index(forKey: tenant) { Self.forgetIfRemoved(at: index, &state) }
                return .shed
            }
            if admitted {
                state.inFlight += 1
                observe?(state.inFlight, state.waiting)
                return .admitted
            }
            state.nextID += 1
            state.waiting += 1
            observe?(state.inFlight, state.waiting)
            return .queued(Ticket(tenant: tenant, id: state.nextID))
        }
    }

    /// Gives up a place in a queue. True if it was still waiting (no grant will
    /// come); false if it was already granted (its grant is on its way and the
    /// exchange must be released).
    func cancel(_ ticket: Ticket) -> Bool {
        state.withLock { state in
            guard let index = state.tenants.index(forKey: ticket.tenant),
                  let position = state.tenants.values[index].waiting.firstIndex(where: { $0.id == ticket.id }) else { return false }
            state.tenants.values[index].waiting.remove(at: position)
            state.waiting -= 1
            Self.forgetIfRemoved(at: index, &state)
            observe?(state.inFlight, state.waiting)
            return true
        }
    }

    /// Ends an exchange of `tenant`; the freed capacity goes to waiters.
    func release(_ tenant: String) {
        let grants = state.withLock { state -> [Delivery] in
            // (One lookup of the name: the tenant is changed, and maybe forgotten, at its index.)
            guard let index = state.tenants.index(forKey: tenant) else { return [] }
            state.tenants.values[index].inFlight -= 1
            state.inFlight -= 1
            Self.forgetIfRemoved(at: index, &state)
            let grants = Self.grantWaiting(&state)
            observe?(state.inFlight, state.waiting)
            return grants
        }
        for delivery in grants { delivery.grant(delivery.ticket) }
    }

    /// The capacity being shared, nil for none.
    var capacity: ProxyCapacity? { state.withLock { $0.capacity } }

    /// Exchanges held now, by tenant and in all (for tests and statistics).
    func inFlight(_ tenant: String? = nil) -> Int {
        state.withLock { state in tenant.map { state.tenants[$0]?.inFlight ?? 0 } ?? state.inFlight }
    }

    /// Grants exchanges to waiters: to any under its share, then, while the
    /// proxy is under capacity, to the waiting tenant with the fewest exchanges per weight.
    private static func grantWaiting(_ state: inout State) -> [Delivery] {
        var grants: [Delivery] = []
        // Nobody waits (the common case): no tenant needs looking at.
        while state.waiting > 0 {
            var chosen: String?
            for (name, tenant) in state.tenants where !tenant.waiting.isEmpty {
                let underShare = tenant.inFlight < tenant.share
                guard underShare || state.inFlight < state.limit else { continue }
                guard let best = chosen.flatMap({ state.tenants[$0] }) else { chosen = name; continue }
                // Fewer exchanges per weight first; among equals, the longest waiting.
                let lhs = tenant.inFlight * best.weight, rhs = best.inFlight * tenant.weight
                if lhs < rhs || (lhs == rhs && tenant.waiting[0].id < best.waiting[0].id) { chosen = name }
            }
            guard let name = chosen else { return grants }
            let waiter = state.tenants[name]!.waiting.removeFirst()
            state.tenants[name]!.inFlight += 1
            state.inFlight += 1
            state.waiting -= 1
            grants.append((waiter.grant, Ticket(tenant: name, id: waiter.id)))
        }
        return grants
    }

    /// Forgets the tenant at `index` if it was removed and holds and awaits nothing.
    private static func forgetIfRemoved(at index: [String: TenantState].Index, _ state: inout State) {
        let tenant = state.tenants.values[index]
        guard tenant.share == 0, tenant.inFlight == 0, tenant.waiting.isEmpty else { return }
        state.tenants.remove(at: index)
    }
}
