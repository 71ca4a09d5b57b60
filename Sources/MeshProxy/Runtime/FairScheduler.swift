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

    /// What asking for an exchange (`acquire`) decided.
    enum Admission: Equatable {
        /// An exchange is held now; `release` gives it back.
        case admitted
        /// Waiting: `whenGranted` runs once an exchange is held, unless cancelled first.
        case queued(Ticket)
        /// Neither admitted nor allowed to wait.
        case shed
    }

    /// Runs once the queued request holds its exchange, with the ticket it waited with.
    typealias Grant = @Sendable (Ticket) -> Void

    fileprivate struct Waiter {
        let id: UInt64
        let grant: Grant
    }

    /// A grant to deliver once the lock is released.
    private typealias Delivery = (grant: Grant, ticket: Ticket)

    /// A tenant's standing with the scheduler: its weight and share, the
    /// exchanges it holds and its queue. A reference that the tenant's
    /// connections keep (``account(for:)``), so that acquiring and releasing an
    /// exchange look nothing up by name. Read and changed only under the
    /// scheduler's lock.
    final class Account: @unchecked Sendable {
        /// The tenant's name.
        let tenant: String
        /// The tenant's weight (1 for one never configured).
        fileprivate var weight: Int
        /// Exchanges the tenant is guaranteed; 0 once the tenant was removed (or for one never configured).
        fileprivate var share: Int
        /// Exchanges the tenant holds.
        fileprivate var inFlight = 0
        /// The tenant's requests waiting for an exchange, first come first.
        fileprivate var waiting: [Waiter] = []
        /// Dropped by the scheduler (a removed tenant's, holding and awaiting
        /// nothing): a connection that still keeps it is served by its
        /// tenant's account of the moment, found by name.
        fileprivate var isForgotten = false

        fileprivate init(tenant: String, weight: Int, share: Int) {
            self.tenant = tenant
            self.weight = weight
            self.share = share
        }

        /// Takes an exchange if the tenant may hold one now (true), else queues
        /// `waiter` if there is one and room in the queue (false); nil: shed.
        fileprivate func admit(proxyHasRoom: Bool, orQueue waiter: Waiter?, maxQueued: Int) -> Bool? {
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
        var accounts: [String: Account] = [:]
        var inFlight = 0
        /// Waiters of all tenants.
        var waiting = 0
        var nextID: UInt64 = 0

        var limit: Int { capacity?.maxConcurrentExchanges ?? .max }

        /// The account of `tenant` now: its own, or — a tenant not (or no
        /// longer) configured, which has no share and may only borrow — a new one.
        mutating func account(of tenant: String) -> Account {
            if let account = accounts[tenant] { return account }
            let account = Account(tenant: tenant, weight: 1, share: 0)
            accounts[tenant] = account
            return account
        }

        /// `account`, or its tenant's account of the moment if it was dropped.
        mutating func current(_ account: Account) -> Account {
            account.isForgotten ? self.account(of: account.tenant) : account
        }

        /// Drops `account` if its tenant was removed and it holds and awaits nothing.
        mutating func forgetIfRemoved(_ account: Account) {
            guard account.share == 0, account.inFlight == 0, account.waiting.isEmpty, !account.isForgotten else { return }
            accounts[account.tenant] = nil
            account.isForgotten = true
        }
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
            for account in Array(state.accounts.values) where weights[account.tenant] == nil {
                account.share = 0
                state.forgetIfRemoved(account)
            }
            for (name, weight) in weights {
                let account = state.account(of: name)
                account.weight = weight
                account.share = capacity.map { max(1, $0.maxConcurrentExchanges * weight / max(total, 1)) } ?? .max
            }
            let grants = Self.grantWaiting(&state)
            observe?(state.inFlight, state.waiting)
            return grants
        }
        for delivery in grants { delivery.grant(delivery.ticket) }
    }

    /// The account of `tenant`, for its connections to keep.
    func account(for tenant: String) -> Account {
        state.withLock { $0.account(of: tenant) }
    }

    /// Asks for an exchange for `tenant` (by name: a connection that asks
    /// again and again keeps its ``Account`` instead).
    func acquire(_ tenant: String, canWait: Bool, whenGranted: @escaping Grant) -> Admission {
        state.withLock { state in acquire(state.account(of: tenant), canWait: canWait, whenGranted: whenGranted, &state) }
    }

    /// Asks for an exchange for the tenant of `account`.
    func acquire(_ account: Account, canWait: Bool, whenGranted: @escaping Grant) -> Admission {
        state.withLock { state in acquire(state.current(account), canWait: canWait, whenGranted: whenGranted, &state) }
    }

    /// Asks for an exchange for `tenant`'s account of the moment, under the lock.
    private func acquire(_ tenant: Account, canWait: Bool, whenGranted: @escaping Grant, _ state: inout State) -> Admission {
        let room = state.inFlight < state.limit
        let waiter = canWait ? Waiter(id: state.nextID + 1, grant: whenGranted) : nil
        let maxQueued = state.capacity?.maxQueuedPerTenant ?? 0
        guard let admitted = tenant.admit(proxyHasRoom: room, orQueue: waiter, maxQueued: maxQueued) else {
            state.forgetIfRemoved(tenant)
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
        return .queued(Ticket(tenant: tenant.tenant, id: state.nextID))
    }

    /// Gives up a place in a queue. True if it was still waiting (no grant will
    /// come); false if it was already granted (its grant is on its way and the
    /// exchange must be released).
    func cancel(_ ticket: Ticket) -> Bool {
        state.withLock { state in
            guard let account = state.accounts[ticket.tenant],
                  let position = account.waiting.firstIndex(where: { $0.id == ticket.id }) else { return false }
            account.waiting.remove(at: position)
            state.waiting -= 1
            state.forgetIfRemoved(account)
            observe?(state.inFlight, state.waiting)
            return true
        }
    }

    /// Ends an exchange of `tenant` (by name, as it was acquired by name).
    func release(_ tenant: String) {
        release { state in state.accounts[tenant] }
    }

    /// Ends an exchange of the tenant of `account` (the account it was acquired
    /// with); the freed capacity goes to waiters.
    func release(_ account: Account) {
        // (An account holding an exchange is never dropped: a dropped one was not the one acquired with.)
        release { state in account.isForgotten ? state.accounts[account.tenant] : account }
    }

    /// Ends an exchange of the account `holder` finds under the lock (none: nothing to end).
    private func release(holder: (inout State) -> Account?) {
        let grants = state.withLock { state -> [Delivery] in
            guard let tenant = holder(&state), tenant.inFlight > 0 else { return [] }
            tenant.inFlight -= 1
            state.inFlight -= 1
            state.forgetIfRemoved(tenant)
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
        state.withLock { state in tenant.map { state.accounts[$0]?.inFlight ?? 0 } ?? state.inFlight }
    }

    /// Grants exchanges to waiters: to any under its share, then, while the
    /// proxy is under capacity, to the waiting tenant with the fewest exchanges per weight.
    private static func grantWaiting(_ state: inout State) -> [Delivery] {
        var grants: [Delivery] = []
        // Nobody waits (the common case): no tenant needs looking at.
        while state.waiting > 0 {
            var chosen: Account?
            for tenant in state.accounts.values where !tenant.waiting.isEmpty {
                let underShare = tenant.inFlight < tenant.share
                guard underShare || state.inFlight < state.limit else { continue }
                guard let best = chosen else { chosen = tenant; continue }
                // Fewer exchanges per weight first; among equals, the longest waiting.
                let lhs = tenant.inFlight * best.weight, rhs = best.inFlight * tenant.weight
                if lhs < rhs || (lhs == rhs && tenant.waiting[0].id < best.waiting[0].id) { chosen = tenant }
            }
            guard let tenant = chosen else { return grants }
            let waiter = tenant.waiting.removeFirst()
            tenant.inFlight += 1
            state.inFlight += 1
            state.waiting -= 1
            grants.append((waiter.grant, Ticket(tenant: tenant.tenant, id: waiter.id)))
        }
        return grants
    }
}
