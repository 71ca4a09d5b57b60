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
/// connection that holds bytes itself waits before it reads (and looks again
/// shortly): reading resumes as the slow sides take what is held. One that
/// holds none reads on — connections stalled by clients that do not read
/// cannot starve one that moves — and what it reads is kept, nothing is
/// dropped; it waits once it holds some. So the tenant stays under its cap
/// plus a read (16 KiB with a cap) per
/// connection, as the kernel under `tcp_mem` pressure still grants each
/// socket its minimum — and where NIO reads, plus what a socket holds at its
/// peer's end of stream (NIO reads that at once, whatever the cap), which
/// ``cappedReceiveBuffer`` keeps small.
final class TenantBuffers: Sendable {
    private let held = Atomic<Int>(0)
    /// The cap; `Int.max` for none.
    private let cap = Atomic<Int>(.max)
    /// ``readsInSmallSteps``, as the limits last taken make it.
    private let smallSteps = Atomic<Bool>(false)
    private let waits = Atomic<Int>(0)
    /// `mesh_proxy_buffer_waits_total{tenant}`, with a metrics factory.
    private let waitsMetric: Counter?

    /// How long a connection that found the tenant at its cap waits before it looks again.
    static let retryDelay: Duration = .milliseconds(10)

    /// Bytes read at once on a connection whose tenant has a cap (or a bandwidth): a bounded step over either.
    static let cappedReadSize = 16_384

    /// The kernel's receive buffer (`SO_RCVBUF`; the kernel doubles it) for a
    /// socket NIO reads for a tenant with a cap (or a bandwidth), fixed instead
    /// of tuned by the kernel as it goes (up to `tcp_rmem`'s maximum, 32 MiB
    /// here): at its peer's end of stream NIO reads all a socket holds at once,
    /// whatever the backpressure, and this bounds that.
    static let cappedReceiveBuffer = 16_384

    /// An account without a cap (until ``update(_:)``), its waits also counted by `waitsMetric`.
    init(waitsMetric: Counter? = nil) {
        self.waitsMetric = waitsMetric
    }

    /// Takes the cap and whether there is a bandwidth from `limits`, for every
    /// connection of the tenant (a live reconfiguration).
    func update(_ limits: TenantLimits) {
        cap.store(limits.maxTotalBufferedBytes ?? .max, ordering: .relaxed)
        smallSteps.store(limits.maxTotalBufferedBytes != nil || limits.bytesPerSecond != nil, ordering: .relaxed)
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

    /// `count` held bytes let go of (sent on, or dropped with their connection).
    func release(_ count: Int) {
        guard count != 0 else { return }
        held.subtract(count, ordering: .relaxed)
    }

    /// A connection's reading waited on the cap (counted once per wait, not per retry).
    func waited() {
        waits.add(1, ordering: .relaxed)
        waitsMetric?.increment()
    }

    /// The bytes held now.
    var heldBytes: Int { held.load(ordering: .relaxed) }

    /// The waits so far.
    var waitCount: Int { waits.load(ordering: .relaxed) }
}
