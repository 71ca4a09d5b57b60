import Glibc
import MeshKernel

/// What a ``SpliceLoop`` is asked to splice: two connected, non-blocking TCP
/// sockets that it owns from then on, and what their pair reports.
struct SpliceRequest: Sendable {
    /// The accepted client's socket.
    var client: Int32
    /// The socket connected to the upstream.
    var upstream: Int32
    /// Told the bytes read from the client, once per read.
    var countFromClient: @Sendable (Int) -> Void
    /// Told the bytes read from the upstream, once per read.
    var countFromUpstream: @Sendable (Int) -> Void
    /// The tenant's bandwidth, which both directions draw on (reading stops while it is in debt).
    var bandwidth: TokenBucket?
    /// Told each time a side stops reading over the bandwidth.
    var throttled: @Sendable () -> Void
    /// The bytes the tenant's connections hold, which the pair's backlogs are
    /// part of; at its cap, a side waits before it reads.
    var buffers: TenantBuffers
    /// Told why the pair failed (a reset, a write error), once both are closed.
    var failed: @Sendable (Errno) -> Void
    /// Told once, after both sockets are closed.
    var ended: @Sendable () -> Void
    /// How long the pair may be silent in both directions before both close.
    var idleTimeout: Duration
    /// Bytes a direction may hold in the proxy (written to the slower side and not taken yet).
    var maxBufferedBytes: Int
    /// What the client sent before the move (read by NIO with its half-close,
    /// while the upstream connected): written to the upstream first.
    var heldFromClient: [UInt8] = []
}

/// Two TCP sockets spliced on a ``SpliceLoop``: what one reads, the other writes.
///
/// The rules of ``SpliceHandler``, on the sockets themselves: a read is
/// written to the partner at once; what the partner's socket does not take
/// is held (its backlog, at most one read) and reading from this side stops
/// until it is out. A peer's end of output (a read of 0, so read only once
/// the partner's backlog is out) shuts the partner's output down; the pair closes when both directions
/// have ended so, or at once on any error (a reset, a failed write). Over the
/// tenant's bandwidth a side stops reading until the debt is paid. Backlogs
/// count in the tenant's buffered bytes; a side reads only while its partner
/// holds nothing, so a pair holds at most a read each way — 16 KiB while the
/// tenant has a cap — and never needs to wait on the cap: a side about to read
/// holds nothing in its direction. A value in its loop's table,
/// changed in place on the loop's thread.
struct SplicedPair {
    /// One of the two sockets, and what the pair holds for it.
    struct Side {
        let socket: Int32
        /// Which side (0: the client, 1: the upstream), in epoll's key.
        let index: UInt64
        /// Told the bytes read from this socket.
        let count: @Sendable (Int) -> Void
        /// Bytes read from the partner that this socket has not taken yet.
        var backlog: [UInt8] = []
        /// Where the backlog not yet written starts.
        var backlogStart = 0
        /// The peer ended its output: a read returned 0.
        var inputEnded = false
        /// This socket's output is shut down.
        var outputShutDown = false
        /// Reading is paused over the tenant's bandwidth.
        var throttled = false
        /// The events epoll watches for on this socket (none: not registered).
        var interest = EventPoll.Events.none

        var hasBacklog: Bool { backlogStart < backlog.count }
        /// The backlog's bytes not yet written.
        var backlogBytes: Int { backlog.count - backlogStart }
        var isDone: Bool { inputEnded && outputShutDown }
    }

    /// How a pair stands after an event.
    enum Outcome: Equatable {
        /// Still splicing.
        case open
        /// Both directions ended cleanly (or the loop closed the pair).
        case finished
        /// A socket failed: both are to close now.
        case failed(Errno)
    }

    /// A side paused over the bandwidth, and when it may read again (``MonotonicTimer/now``'s clock).
    struct Pause {
        var until: Int64
        var pair: UInt64
        var side: UInt64
    }

    /// The tenant's bandwidth, and whom to tell of a pause.
    private final class Bandwidth {
        let bucket: TokenBucket
        let throttled: @Sendable () -> Void

        init(_ bucket: TokenBucket, throttled: @escaping @Sendable () -> Void) {
            self.bucket = bucket
            self.throttled = throttled
        }
    }

    /// The pair's number on its loop (epoll's key for its sockets, with the side).
    let id: UInt64
    private var client: Side
    private var upstream: Side
    private let request: SpliceRequest
    private let bandwidth: Bandwidth?
    /// Bytes read at once: a direction's backlog is at most this.
    private let readSize: Int
    /// Read or written since the last idle sweep (a new pair counts as active).
    var active = true
    /// The loop's sweep tick from which the pair has been silent.
    var silentSinceTick: UInt64

    /// A pair for `request`, made at the loop's sweep tick `tick`.
    init(_ request: SpliceRequest, id: UInt64, tick: UInt64) {
        self.id = id
        self.request = request
        bandwidth = request.bandwidth.map { Bandwidth($0, throttled: request.throttled) }
        client = Side(socket: request.client, index: 0, count: request.countFromClient)
        upstream = Side(socket: request.upstream, index: 1, count: request.countFromUpstream)
        // Bytes read before the move are the upstream's first backlog (and the client is read again once they are out).
        if !request.heldFromClient.isEmpty {
            upstream.backlog = request.heldFromClient
            request.buffers.hold(request.heldFromClient.count)
            request.countFromClient(request.heldFromClient.count)
            _ = bandwidth?.bucket.take(request.heldFromClient.count)   // a debt delays the next reads
        }
        // With a bandwidth limit, or a cap on buffered bytes, small reads: the limit is checked every 16 KiB.
        // (As the pair begins: a cap set later makes the reads of later pairs small.)
        readSize = min(request.maxBufferedBytes, request.buffers.readsInSmallSteps ? TenantBuffers.cappedReadSize : SpliceLoop.scratchSize)
        silentSinceTick = tick
    }

    /// The idle timeout, in nanoseconds.
    var idleTimeout: Int64 { Int64(request.idleTimeout / .nanoseconds(1)) }

    /// Handles epoll's `events` for side `index`, reading into `scratch`, and
    /// registers the interests that changed with `poll`. A side that stops
    /// reading over the bandwidth is added to `pauses`.
    mutating func handle(_ events: EventPoll.Events, side index: UInt64, scratch: UnsafeMutableRawBufferPointer, poll: borrowing EventPoll,
                         pauses: inout [Pause]) -> Outcome {
        var direction = Direction(readSize: readSize, bandwidth: bandwidth, pair: id)
        let outcome = index == 0
            ? direction.handle(events, &client, partner: &upstream, scratch: scratch, pauses: &pauses)
            : direction.handle(events, &upstream, partner: &client, scratch: scratch, pauses: &pauses)
        if direction.moved { active = true }
        if direction.heldChange != 0 { account(direction.heldChange) }
        return outcome == .open ? register(poll) : outcome
    }

    /// Tells the tenant's account how the backlogs changed (rarely: only when a socket did not take a whole read, and as it drains).
    @inline(never)
    private func account(_ change: Int) {
        request.buffers.change(by: change)
    }

    /// Starts watching both sockets for reading.
    mutating func start(_ poll: borrowing EventPoll) -> Outcome { register(poll) }

    /// Side `index`, paused over the bandwidth, may pay its debt: reading
    /// resumes, or the pause goes on until the deadline returned.
    mutating func resume(_ index: UInt64, now: Int64, poll: borrowing EventPoll) -> (Outcome, until: Int64?) {
        if let owed = bandwidth?.bucket.take(0), owed > .zero {
            return (.open, now + Int64(owed / .nanoseconds(1)))
        }
        if index == 0 { client.throttled = false } else { upstream.throttled = false }
        return (register(poll), nil)
    }

    /// Unregisters and closes both sockets, then reports the end. (Closing
    /// alone would not unregister a socket whose duplicate NIO has not closed yet.)
    func close(_ outcome: Outcome, poll: borrowing EventPoll) {
        for side in [client, upstream] {
            if side.interest.rawValue != 0 { try? poll.remove(side.socket) }
            _ = Glibc.close(side.socket)
            request.buffers.release(side.backlogBytes)
        }
        if case .failed(let error) = outcome { request.failed(error) }
        request.ended()
    }

    // MARK: Directions

    /// One event's work from a side to its partner, with what it needs of the pair.
    private struct Direction {
        let readSize: Int
        let bandwidth: Bandwidth?
        let pair: UInt64
        /// Bytes were read or written.
        var moved = false
        /// How the bytes the pair holds changed (for the tenant's account).
        var heldChange = 0

        mutating func handle(_ events: EventPoll.Events, _ side: inout Side, partner: inout Side, scratch: UnsafeMutableRawBufferPointer,
                             pauses: inout [Pause]) -> Outcome {
            if events.overlaps(.error) { return .failed(Errno.pending(onSocket: side.socket)) }
            // A hang-up is read (to its end) or written into (which fails), as the side is waiting to.
            let hangUp = events.overlaps(.hangUp)
            if events.overlaps(.readable) || hangUp, side.interest.overlaps(.readable) {
                let outcome = read(&side, to: &partner, scratch: scratch, pauses: &pauses)
                guard outcome == .open else { return outcome }
            }
            if events.overlaps(.writable) || hangUp, side.hasBacklog {
                return flush(&side)
            }
            return .open
        }

        /// One read from `side`, written on to `partner`.
        private mutating func read(_ side: inout Side, to partner: inout Side, scratch: UnsafeMutableRawBufferPointer,
                                   pauses: inout [Pause]) -> Outcome {
            let read = recv(side.socket, scratch.baseAddress, readSize, 0)
            if read < 0 { return SplicedPair.unlessRetried(.current) }
            guard read > 0 else {
                // A side reads only while its partner holds nothing: all it read before its end is out.
                side.inputEnded = true
                return SplicedPair.shutDownOutput(&partner, partnerDone: side.isDone)
            }
            moved = true
            side.count(read)
            if let bandwidth, case let owed = bandwidth.bucket.take(read), owed > .zero {
                side.throttled = true
                pauses.append(Pause(until: MonotonicTimer.now + Int64(owed / .nanoseconds(1)), pair: pair, side: side.index))
                bandwidth.throttled()
            }
            return SplicedPair.write(UnsafeRawBufferPointer(rebasing: scratch[..<read]), to: &partner, held: &heldChange)
        }

        /// Writes `side`'s backlog.
        private mutating func flush(_ side: inout Side) -> Outcome {
            let start = side.backlogStart
            let written = side.backlog.withUnsafeBytes { bytes in
                send(side.socket, bytes.baseAddress! + start, bytes.count - start, Int32(MSG_NOSIGNAL))
            }
            if written < 0 { return SplicedPair.unlessRetried(.current) }
            moved = true
            side.backlogStart += written
            heldChange -= written
            guard !side.hasBacklog else { return .open }
            side.backlog.removeAll(keepingCapacity: true)
            side.backlogStart = 0
            return .open
        }
    }

    /// Writes `bytes` to `side`; what its socket does not take becomes its backlog (added to `held`).
    private static func write(_ bytes: UnsafeRawBufferPointer, to side: inout Side, held: inout Int) -> Outcome {
        let written = send(side.socket, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
        if written < 0, case let outcome = unlessRetried(.current), outcome != .open { return outcome }
        let taken = max(written, 0)
        if taken < bytes.count {
            side.backlog.append(contentsOf: bytes[taken...])
            held += bytes.count - taken
        }
        return .open
    }


    /// Shuts `side`'s output down (its partner's input ended); the pair is
    /// finished once both directions are.
    private static func shutDownOutput(_ side: inout Side, partnerDone: Bool) -> Outcome {
        if !side.outputShutDown {
            side.outputShutDown = true
            if shutdown(side.socket, Int32(SHUT_WR)) != 0 { return .failed(.current) }
        }
        return side.isDone && partnerDone ? .finished : .open
    }

    /// Open after `EAGAIN` or `EINTR` (the call is made again at the next event); failed after anything else.
    private static func unlessRetried(_ error: Errno) -> Outcome {
        error == .tryAgain || error == .interrupted ? .open : .failed(error)
    }

    // MARK: Interest

    /// Brings epoll's registrations in line with what each side waits for.
    private mutating func register(_ poll: borrowing EventPoll) -> Outcome {
        do {
            try Self.register(&client, of: id, partnerHoldsBytes: upstream.hasBacklog, poll)
            try Self.register(&upstream, of: id, partnerHoldsBytes: client.hasBacklog, poll)
            return .open
        } catch {
            return .failed(error)
        }
    }

    /// Registers `side` of pair `id` for reading while it may read and its
    /// partner holds nothing, for writing while it has a backlog. A side that
    /// waits for nothing is unregistered: a hang-up would otherwise be
    /// reported again and again while it waits for its partner.
    private static func register(_ side: inout Side, of id: UInt64, partnerHoldsBytes: Bool, _ poll: borrowing EventPoll) throws(Errno) {
        var events = EventPoll.Events.none
        if !side.inputEnded, !side.throttled, !partnerHoldsBytes { events = events.adding(.readable) }
        if side.hasBacklog { events = events.adding(.writable) }
        guard events.rawValue != side.interest.rawValue else { return }
        let key = id << 1 | side.index
        if side.interest.rawValue == 0 {
            try poll.add(side.socket, for: events, key: key)
        } else if events.rawValue == 0 {
            try poll.remove(side.socket)
        } else {
            try poll.modify(side.socket, for: events, key: key)
        }
        side.interest = events
    }

}
