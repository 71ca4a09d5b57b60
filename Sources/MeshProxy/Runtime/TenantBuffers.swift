import CoreMetrics
import Synchronization

/// The bytes all of one tenant's connections hold in the proxy together —
/// read from one side and not yet taken by the other side's socket — and the
/// tenant's cap on them (``TenantLimits/maxTotalBufferedBytes``), like a
/// container's memory limit.
///
/// Every place that holds a tenant's bytes tells it what it holds and lets go
/// of: a splice's backlog, a socket's unsent output, the output NIO writes
/// for a channel, an HTTP request's input held while it waits. At the cap, a
/// connection that holds bytes itself waits before it reads
/// (``waitForRoom(_:)``), woken when the tenant goes under its cap or the
/// cap changes — and by its own transport when what it holds is all sent:
/// reading resumes as the slow sides take what is held. One that
/// holds none reads on — connections stalled by clients that do not read
/// cannot starve one that moves — and what it reads is kept, nothing is
/// dropped; it waits once it holds some. So the tenant stays under its cap
/// plus a read (16 KiB with a cap) per
/// connection, as the kernel under `tcp_mem` pressure still grants each
/// socket its minimum — and where NIO reads, plus what a socket holds at its
/// peer's end of stream (NIO reads that at once, whatever the cap), which
/// ``cappedReceiveBuffer`` bounds (96 KiB a socket).
final class TenantBuffers: Sendable {
    private let held = Atomic<Int>(0)
    /// The cap; `Int.max` for none.
    private let cap = Atomic<Int>(.max)
    /// ``readsInSmallSteps``, as the limits last taken make it.
    private let smallSteps = Atomic<Bool>(false)
    private let waits = Atomic<Int>(0)
    /// `mesh_proxy_buffer_waits_total{tenant}`, with a metrics factory.
    private let waitsMetric: Counter?
    /// The connections waiting for room under the cap.
    private let roomWaits = Mutex<[ObjectIdentifier: RoomWait]>([:])
    /// How many there are: read by every ``release(_:)`` without the lock.
    private let roomWaitTotal = Atomic<Int>(0)

    /// One connection's wait for room under the cap (``waitForRoom(_:)``).
    final class RoomWait: Sendable {
        fileprivate let wake: @Sendable () -> Void

        fileprivate init(wake: @escaping @Sendable () -> Void) {
            self.wake = wake
        }
    }

    /// Bytes read at once on a connection whose tenant has a cap (or a bandwidth): a bounded step over either.
    static let cappedReadSize = 16_384

    /// The kernel's receive buffer (`SO_RCVBUF`; the kernel doubles it) for a
    /// socket NIO reads for a tenant with a cap (or a bandwidth), fixed instead
    /// of tuned by the kernel as it goes (up to `tcp_rmem`'s maximum, 32 MiB
    /// here): at its peer's end of stream NIO reads all a socket holds at once,
    /// whatever the backpressure, and this bounds that. Not smaller: doubled
    /// (96 KiB), it takes a whole loopback segment (64 KiB and its overhead).
    /// With 16 KiB, a peer sending full loopback segments had them dropped
    /// for want of room, and stalled on its retransmission timer's growing
    /// backoff: an upload of 8 MiB did not finish in 25 s.
    static let cappedReceiveBuffer = 49_152

    /// An account without a cap (until ``update(_:)``), its waits also counted by `waitsMetric`.
    init(waitsMetric: Counter? = nil) {
        self.waitsMetric = waitsMetric
    }

    /// Takes the cap and whether there is a bandwidth from `limits`, for every
    /// connection of the tenant (a live reconfiguration).
    func update(_ limits: TenantLimits) {
        cap.store(limits.maxTotalBufferedBytes ?? .max, ordering: .sequentiallyConsistent)
        smallSteps.store(limits.maxTotalBufferedBytes != nil || limits.bytesPerSecond != nil, ordering: .relaxed)
        // (A cap raised or removed may make room: the waiting connections look again.)
        wakeRoomWaits()
    }

    /// Whether the tenant has a cap at all.
    var isCapped: Bool { cap.load(ordering: .relaxed) != .max }

    /// Whether the tenant's connections read in small steps
    /// (``cappedReadSize``, and where NIO reads, from a
    /// ``cappedReceiveBuffer``): it has a cap or a bandwidth, which a read
    /// may overshoot by that much. The one rule for every place that reads.
    var readsInSmallSteps: Bool { smallSteps.load(ordering: .relaxed) }

    /// Whether the tenant holds its cap or more: reading waits.
    var isFull: Bool { held.load(ordering: .relaxed) >= cap.load(ordering: .relaxed) }

    /// `count` more bytes held.
    func hold(_ count: Int) {
        guard count != 0 else { return }
        held.add(count, ordering: .relaxed)
    }

    /// `count` held bytes let go of (sent on, or dropped with their connection);
    /// under the cap after it, the connections waiting for room are woken.
    func release(_ count: Int) {
        guard count != 0 else { return }
        // (Both sequentially consistent, as in waitForRoom: a wait registered
        // as the last room is made is either seen here or sees the room itself.)
        let now = held.subtract(count, ordering: .sequentiallyConsistent).newValue
        if roomWaitTotal.load(ordering: .sequentiallyConsistent) > 0, now < cap.load(ordering: .sequentiallyConsistent) {
            wakeRoomWaits()
        }
    }

    /// `delta` more bytes held (``hold(_:)``), or `-delta` let go of (``release(_:)``).
    func change(by delta: Int) {
        if delta > 0 { hold(delta) } else { release(-delta) }
    }

    /// Waits for room under the cap: `wake` is called once — from any thread,
    /// so it only hands the waiter a turn on its own loop — when the tenant
    /// goes under its cap or the cap changes, or at once (from within this
    /// call) if there is room already. The waiter then looks again, and
    /// waits again if it must. What it holds draining is its own transport's
    /// to tell. ``cancel(_:)`` ends the wait unwoken. (A connection holds its
    /// wait in a ``RoomWaiting``.)
    func waitForRoom(_ wake: @escaping @Sendable () -> Void) -> RoomWait {
        let wait = RoomWait(wake: wake)
        roomWaits.withLock { waits in
            waits[ObjectIdentifier(wait)] = wait
            roomWaitTotal.store(waits.count, ordering: .sequentiallyConsistent)
        }
        // Room made between the caller's look and the registration found nobody to wake.
        if held.load(ordering: .sequentiallyConsistent) < cap.load(ordering: .sequentiallyConsistent) { wakeRoomWaits() }
        return wait
    }

    /// Ends `wait` unwoken (its connection went, or looked again for another reason); nothing if it was woken already.
    func cancel(_ wait: RoomWait) {
        roomWaits.withLock { waits in
            guard waits.removeValue(forKey: ObjectIdentifier(wait)) != nil else { return }
            roomWaitTotal.store(waits.count, ordering: .sequentiallyConsistent)
        }
    }

    /// Wakes every waiting connection, once each.
    private func wakeRoomWaits() {
        let woken = roomWaits.withLock { waits in
            let all = waits
            waits.removeAll()
            roomWaitTotal.store(0, ordering: .sequentiallyConsistent)
            return all
        }
        for wait in woken.values { wait.wake() }
    }

    /// The connections waiting for room now.
    var waitingForRoom: Int { roomWaitTotal.load(ordering: .relaxed) }

    /// A connection's reading waited on the cap (counted once per wait, however often it is woken and waits on).
    func waited() {
        waits.add(1, ordering: .relaxed)
        waitsMetric?.increment()
    }

    /// The bytes held now.
    var heldBytes: Int { held.load(ordering: .relaxed) }

    /// The waits so far.
    var waitCount: Int { waits.load(ordering: .relaxed) }
}
