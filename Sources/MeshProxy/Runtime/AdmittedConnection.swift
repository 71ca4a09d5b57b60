import NIOCore
import Synchronization

/// An admitted client connection as the proxy tracks it until it ends: on
/// its NIO channel, or on a ``SpliceLoop`` — spliced there as a pair of
/// sockets, or served there as a ``LoopSocket``. Its end is reported once,
/// wherever it happens, and a drain asks it to close gracefully, then closes it, wherever it is.
final class AdmittedConnection: Sendable {
    private enum Place {
        /// On its channel; `closing` once a drain asked it to close.
        case channel(any Channel, closing: Bool)
        case spliced(SpliceLoop, pair: UInt64)
        case served(SpliceLoop, socket: UInt64)
        case ended
    }

    private let place: Mutex<Place>
    private let ended: @Sendable (AdmittedConnection) -> Void
    private let draining = Atomic(false)

    /// Whether a drain has asked the connection to close gracefully (``closeGracefully()``).
    var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Tracks `channel`; `ended` runs once, when the connection ends (after ``watchChannel()``).
    init(_ channel: any Channel, ended: @escaping @Sendable (AdmittedConnection) -> Void) {
        place = Mutex(.channel(channel, closing: false))
        self.ended = ended
    }

    /// From now on the channel's close ends the connection (until it moves to a
    /// splice loop); at once if it is closed already.
    func watchChannel() {
        guard case .channel(let channel, _) = place.withLock({ $0 }) else { return }
        channel.closeFuture.whenComplete { [self] _ in
            end { if case .channel = $0 { true } else { false } }
        }
    }

    /// Moves the connection onto `loop`, which splices `request`'s sockets from
    /// now on; its channel's close is then no longer its end, the pair's is
    /// (``pairEnded()``). False — nothing moved, the sockets are still the
    /// caller's — when the connection has ended or a drain asked it to close
    /// meanwhile, or the loop has stopped.
    func move(to loop: SpliceLoop, splicing request: SpliceRequest) -> Bool {
        move(to: loop, as: { .spliced(loop, pair: $0) }) { loop.splice(request, id: $0) }
    }

    /// The pair the connection moved to has closed.
    func pairEnded() {
        end { if case .spliced = $0 { true } else { false } }
    }

    /// Moves the connection onto `loop`, where `serve` runs (on the loop's
    /// thread) to serve it as socket `key` (``SpliceLoop/reserveID()``,
    /// ``LoopSocket``); its channel's close is then no longer its end, the
    /// socket's is (``socketEnded()``, which `serve` must see to, also when it
    /// fails). False — nothing moved, `serve` will not run — as for
    /// ``move(to:splicing:)``.
    func move(to loop: SpliceLoop, serving serve: @escaping @Sendable (_ key: UInt64) -> Void) -> Bool {
        move(to: loop, as: { .served(loop, socket: $0) }) { key in loop.enqueueTask { serve(key) } }
    }

    /// Moves the connection to its place `moved` on `loop` (by the number
    /// the loop reserves for it) if `handOver` gives the loop the connection.
    private func move(to loop: SpliceLoop, as moved: (UInt64) -> Place, handingOver handOver: (UInt64) -> Bool) -> Bool {
        place.withLock { place in
            // Under the lock: a drain's close comes after the hand-over, on the loop, or before the move, on the channel.
            guard case .channel(_, closing: false) = place else { return false }
            let id = loop.reserveID()
            guard handOver(id) else { return false }
            place = moved(id)
            return true
        }
    }

    /// The socket the connection moved to has closed (or could not be served).
    func socketEnded() {
        end { if case .served = $0 { true } else { false } }
    }

    /// Closes the connection wherever it is (a drain's end).
    func close() {
        let current = place.withLock { place in
            defer { if case .channel(let channel, _) = place { place = .channel(channel, closing: true) } }
            return place
        }
        switch current {
        case .channel(let channel, _): channel.close(promise: nil)
        case .spliced(let loop, let id): loop.close(id)
        case .served(let loop, let key): loop.closeSocket(key)
        case .ended: break
        }
    }

    /// Asks the connection to close gracefully wherever it is (a drain's
    /// start): an HTTP connection's handler (``GracefulClosing``) finishes the
    /// request in progress and closes; a spliced connection is left to finish.
    /// A handler started after this asks itself (``isDraining``).
    func closeGracefully() {
        draining.store(true, ordering: .relaxed)
        switch place.withLock({ $0 }) {
        case .channel(let channel, _): channel.pipeline.fireUserInboundEventTriggered(ProxyDraining())
        case .served(let loop, let key): loop.closeSocketGracefully(key)
        case .spliced, .ended: break
        }
    }

    /// Reports the end if the connection is where `isHere` says.
    private func end(if isHere: (Place) -> Bool) {
        let ending = place.withLock { place in
            guard isHere(place) else { return false }
            place = .ended
            return true
        }
        if ending { ended(self) }
    }
}
