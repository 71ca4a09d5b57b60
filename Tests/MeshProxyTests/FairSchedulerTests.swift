@testable import MeshProxy
import Synchronization
import Testing

/// Grants in the order they arrived.
private final class GrantLog: Sendable {
    private let entries = Mutex<[String]>([])
    func grant(_ name: String) -> FairScheduler.Grant { { _ in self.entries.withLock { $0.append(name) } } }
    var all: [String] { entries.withLock { $0 } }
}

@Suite("FairScheduler")
struct FairSchedulerTests {
    @Test("each tenant is admitted up to its weighted share even while another borrowed all the capacity; beyond it, requests wait")
    func guaranteedShares() {
        let scheduler = FairScheduler(capacity: ProxyCapacity(maxConcurrentExchanges: 8), weights: ["a": 1, "b": 3])
        let log = GrantLog()
        // a borrows the whole idle capacity.
        for _ in 0..<8 { #expect(scheduler.acquire("a", canWait: true, whenGranted: log.grant("a")) == .admitted) }
        guard case .queued = scheduler.acquire("a", canWait: true, whenGranted: log.grant("a9")) else {
            Issue.record("a ninth exchange of a was not queued")
            return
        }
        // b's share is 8 × 3/4 = 6, guaranteed at once; its seventh waits.
        for _ in 0..<6 { #expect(scheduler.acquire("b", canWait: true, whenGranted: log.grant("b")) == .admitted) }
        guard case .queued = scheduler.acquire("b", canWait: true, whenGranted: log.grant("b7")) else {
            Issue.record("a seventh exchange of b was not queued")
            return
        }
        #expect(scheduler.inFlight() == 14)
        // Ends of a's borrowed exchanges bring the proxy back to its capacity before anyone waiting gets one.
        for _ in 0..<6 { scheduler.release("a") }
        #expect(scheduler.inFlight() == 8 && log.all.isEmpty)
        // Now a holds 2 (2 per weight), b holds 6 (2 per weight): the longest waiting, a9, goes first.
        scheduler.release("a")
        #expect(log.all == ["a9"])
        scheduler.release("a")
        // a holds 1 (1 per weight) and waits for nothing; b's waiter takes the freed exchange.
        #expect(log.all == ["a9", "b7"])
        #expect(scheduler.inFlight("a") == 1 && scheduler.inFlight("b") == 7)
    }

    @Test("a freed exchange goes to the waiting tenant with the fewest exchanges per weight; within a tenant, first come first served")
    func weightedOrder() {
        let scheduler = FairScheduler(capacity: ProxyCapacity(maxConcurrentExchanges: 4), weights: ["a": 1, "b": 1, "c": 2])
        let log = GrantLog()
        // Shares: 1, 1, 2. Fill: a 1, b 1, c 2.
        for name in ["a", "b", "c", "c"] { #expect(scheduler.acquire(name, canWait: true, whenGranted: log.grant(name)) == .admitted) }
        for name in ["a1", "a2", "b1", "c1"] {
            guard case .queued = scheduler.acquire(String(name.prefix(1)), canWait: true, whenGranted: log.grant(name)) else {
                Issue.record("\(name) was not queued")
                return
            }
        }
        // c frees one: a, b and c each hold 1 per weight (c: 1 of weight 2 = 0.5): c1 goes first.
        scheduler.release("c")
        #expect(log.all == ["c1"])
        // a frees one: a holds 0, the least per weight, so a's first waiter a1 takes it.
        scheduler.release("a")
        #expect(log.all == ["c1", "a1"])
        // b frees one: b holds 0: b1 takes it.
        scheduler.release("b")
        #expect(log.all == ["c1", "a1", "b1"])
        // c frees one: a (1/1) is the only tenant waiting.
        scheduler.release("c")
        #expect(log.all == ["c1", "a1", "b1", "a2"])
    }

    @Test("a full queue sheds; a cancelled waiter is never granted; a grant that won the race is reported to the canceller")
    func shedAndCancel() {
        let scheduler = FairScheduler(capacity: ProxyCapacity(maxConcurrentExchanges: 1, maxQueuedPerTenant: 2), weights: ["a": 1])
        let log = GrantLog()
        #expect(scheduler.acquire("a", canWait: true, whenGranted: log.grant("first")) == .admitted)
        guard case .queued(let second) = scheduler.acquire("a", canWait: true, whenGranted: log.grant("second")),
              case .queued(let third) = scheduler.acquire("a", canWait: true, whenGranted: log.grant("third")) else {
            Issue.record("the queue did not take two")
            return
        }
        #expect(scheduler.acquire("a", canWait: true, whenGranted: log.grant("fourth")) == .shed)
        // L4 never waits.
        #expect(scheduler.acquire("a", canWait: false, whenGranted: log.grant("l4")) == .shed)
        #expect(scheduler.cancel(second))
        scheduler.release("a")
        #expect(log.all == ["third"])
        // third was granted: cancelling it now says so (the caller must release).
        #expect(!scheduler.cancel(third))
        scheduler.release("a")
        #expect(scheduler.inFlight() == 0)
    }

    @Test("without a capacity every exchange is admitted and counted; a removed tenant's exchanges stay counted until they end")
    func unboundedAndRemoved() {
        let scheduler = FairScheduler(capacity: nil, weights: ["a": 1])
        for _ in 0..<1_000 { #expect(scheduler.acquire("a", canWait: false, whenGranted: { _ in }) == .admitted) }
        #expect(scheduler.inFlight() == 1_000)
        scheduler.update(capacity: ProxyCapacity(maxConcurrentExchanges: 10), weights: ["b": 1])
        // b is guaranteed its share though the removed a holds far more than the capacity.
        for _ in 0..<10 { #expect(scheduler.acquire("b", canWait: false, whenGranted: { _ in }) == .admitted) }
        #expect(scheduler.acquire("b", canWait: false, whenGranted: { _ in }) == .shed)
        // a, no longer configured, can only borrow idle capacity: none is idle.
        #expect(scheduler.acquire("a", canWait: false, whenGranted: { _ in }) == .shed)
        for _ in 0..<1_000 { scheduler.release("a") }
        #expect(scheduler.inFlight("a") == 0 && scheduler.inFlight() == 10)
    }

    @Test("an account a connection keeps follows its tenant: through its removal (dropped once idle, never while holding an exchange) and its return under the same name")
    func keptAccounts() {
        let scheduler = FairScheduler(capacity: ProxyCapacity(maxConcurrentExchanges: 4), weights: ["a": 1, "b": 1])
        let kept = scheduler.account(for: "a")
        #expect(scheduler.acquire(kept, canWait: false, whenGranted: { _ in }) == .admitted)
        #expect(scheduler.inFlight("a") == 1)
        // Removed while holding an exchange: still counted, and released on the same account.
        scheduler.update(capacity: ProxyCapacity(maxConcurrentExchanges: 4), weights: ["b": 1])
        #expect(scheduler.inFlight("a") == 1 && scheduler.inFlight() == 1)
        scheduler.release(kept)
        #expect(scheduler.inFlight("a") == 0 && scheduler.inFlight() == 0)
        // Back under its name: the kept (dropped) account serves the tenant's new one.
        scheduler.update(capacity: ProxyCapacity(maxConcurrentExchanges: 4), weights: ["a": 3, "b": 1])
        for _ in 0..<3 { #expect(scheduler.acquire(kept, canWait: false, whenGranted: { _ in }) == .admitted) }
        #expect(scheduler.inFlight("a") == 3, "counted on the tenant's account of the moment")
        // Its new share (3 of 4) holds: b still gets its own one.
        #expect(scheduler.acquire("b", canWait: false, whenGranted: { _ in }) == .admitted)
        #expect(scheduler.acquire(kept, canWait: false, whenGranted: { _ in }) == .shed)
        for _ in 0..<3 { scheduler.release(kept) }
        scheduler.release("b")
        #expect(scheduler.inFlight() == 0)
        // A release with nothing held changes nothing (no count goes below zero).
        scheduler.release(kept)
        scheduler.release(scheduler.account(for: "b"))
        #expect(scheduler.inFlight("a") == 0 && scheduler.inFlight("b") == 0 && scheduler.inFlight() == 0)
        #expect(scheduler.acquire(kept, canWait: false, whenGranted: { _ in }) == .admitted)
        #expect(scheduler.inFlight() == 1)
        scheduler.release(kept)
        // Waiting through a dropped account: queued, cancelled, queued again and granted, on the tenant's account of the moment.
        scheduler.update(capacity: ProxyCapacity(maxConcurrentExchanges: 2, maxQueuedPerTenant: 4), weights: ["b": 1])
        scheduler.update(capacity: ProxyCapacity(maxConcurrentExchanges: 2, maxQueuedPerTenant: 4), weights: ["a": 1, "b": 1])
        let log = GrantLog()
        for _ in 0..<2 { #expect(scheduler.acquire("b", canWait: false, whenGranted: { _ in }) == .admitted) }
        #expect(scheduler.acquire(kept, canWait: true, whenGranted: log.grant("share")) == .admitted, "a's guaranteed share")
        guard case .queued(let first) = scheduler.acquire(kept, canWait: true, whenGranted: log.grant("first")) else {
            Issue.record("a full proxy did not queue a's request")
            return
        }
        #expect(scheduler.cancel(first))
        guard case .queued = scheduler.acquire(kept, canWait: true, whenGranted: log.grant("second")) else {
            Issue.record("a full proxy did not queue a's request")
            return
        }
        scheduler.release("b")
        #expect(scheduler.inFlight() == 2, "b's borrowed exchange is not passed on: the proxy is over its capacity")
        scheduler.release("b")
        #expect(log.all == ["second"] && scheduler.inFlight("a") == 2)
        for _ in 0..<2 { scheduler.release(kept) }
        #expect(scheduler.inFlight() == 0)
    }
}
