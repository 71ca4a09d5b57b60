import NIOCore

/// One connection's wait for room under its tenant's cap of buffered bytes
/// (``TenantBuffers/waitForRoom(_:)``): at most one at a time, its wake-up
/// delivered on the connection's own event loop, on a later turn.
struct RoomWaiting {
    private var wait: TenantBuffers.RoomWait?

    /// Whether the connection waits now.
    var isWaiting: Bool { wait != nil }

    /// Waits for room in `buffers`, unless waiting already: once there may be
    /// room, `wake` is called with `waiter` on `eventLoop` (where this is called).
    mutating func begin<Waiter: AnyObject>(in buffers: TenantBuffers, for waiter: Waiter, on eventLoop: any EventLoop,
                                           _ wake: @escaping (Waiter) -> Void) {
        guard wait == nil else { return }
        let waiter = NIOLoopBound(waiter, eventLoop: eventLoop), wake = NIOLoopBound(wake, eventLoop: eventLoop)
        wait = buffers.waitForRoom { waiter.eventLoop.execute { wake.value(waiter.value) } }
    }

    /// Ends the wait unwoken, or forgets it once woken (nothing without one): whether there was one.
    @discardableResult
    mutating func end(in buffers: TenantBuffers?) -> Bool {
        guard let wait else { return false }
        buffers?.cancel(wait)
        self.wait = nil
        return true
    }
}
