import CBPFShim
#if canImport(Glibc)
import Glibc
#endif

/// An epoll instance (`epoll_create1`), for a thread that waits on many
/// descriptors at once: level-triggered registrations, each with a 64-bit
/// key that comes back with its events. For MeshProxy's splice loops, which
/// do not see this module's C shim.
package struct EventPoll: ~Copyable, Sendable {
    /// What a registration waits for, and what epoll reports. Inlinable, with
    /// the kernel's values: a loop tests these on every event.
    package struct Events: OptionSet, Sendable {
        package let rawValue: UInt32
        @inlinable package init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Readable, or at its end (`EPOLLIN`).
        @inlinable package static var readable: Events { Events(rawValue: 0x001) }
        /// Writable (`EPOLLOUT`).
        @inlinable package static var writable: Events { Events(rawValue: 0x004) }
        /// A pending error (`EPOLLERR`, always reported).
        @inlinable package static var error: Events { Events(rawValue: 0x008) }
        /// Both directions shut down, or reset (`EPOLLHUP`, always reported).
        @inlinable package static var hangUp: Events { Events(rawValue: 0x010) }
        /// Whether any of `events` is among these (one mask, no generic set algebra).
        @inlinable package func overlaps(_ events: Events) -> Bool { rawValue & events.rawValue != 0 }
        /// These and `events`.
        @inlinable package func adding(_ events: Events) -> Events { Events(rawValue: rawValue | events.rawValue) }
        /// None.
        @inlinable package static var none: Events { Events(rawValue: 0) }
    }

    /// Room for the events of one wait, read back by index.
    package struct Batch {
        fileprivate var events: [epoll_event]

        /// Room for `capacity` events a wait.
        package init(capacity: Int) { events = [epoll_event](repeating: epoll_event(), count: capacity) }

        /// The events of entry `index` and its registration's key.
        package subscript(index: Int) -> (events: Events, key: UInt64) {
            (Events(rawValue: events[index].events), events[index].data.u64)
        }
    }

    /// The epoll descriptor.
    package let descriptor: Int32

    /// A new epoll instance (close-on-exec).
    package init() throws(Errno) {
        assert(Events.readable.rawValue == EPOLLIN.rawValue && Events.writable.rawValue == EPOLLOUT.rawValue
               && Events.error.rawValue == EPOLLERR.rawValue && Events.hangUp.rawValue == EPOLLHUP.rawValue)
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw .current }
    }

    deinit { closeDescriptor(descriptor) }

    /// Registers `fd` for `events`, reported with `key` (`EPOLL_CTL_ADD`).
    package func add(_ fd: Int32, for events: Events, key: UInt64) throws(Errno) {
        try control(EPOLL_CTL_ADD, fd, events, key)
    }

    /// Changes what `fd` is registered for (`EPOLL_CTL_MOD`).
    package func modify(_ fd: Int32, for events: Events, key: UInt64) throws(Errno) {
        try control(EPOLL_CTL_MOD, fd, events, key)
    }

    /// Unregisters `fd` (`EPOLL_CTL_DEL`); closing its last descriptor does too.
    package func remove(_ fd: Int32) throws(Errno) {
        try control(EPOLL_CTL_DEL, fd, .none, 0)
    }

    /// Waits up to `milliseconds` (-1: without end) for events; returns how
    /// many entries of `batch` were filled (0 on a timeout or a signal).
    package func wait(into batch: inout Batch, milliseconds: Int32) throws(Errno) -> Int {
        let ready = epoll_wait(descriptor, &batch.events, Int32(batch.events.count), milliseconds)
        if ready < 0 {
            guard Glibc.errno == EINTR else { throw .current }
            return 0
        }
        return Int(ready)
    }

    private func control(_ operation: Int32, _ fd: Int32, _ events: Events, _ key: UInt64) throws(Errno) {
        var event = epoll_event(events: events.rawValue, data: epoll_data_t(u64: key))
        guard epoll_ctl(descriptor, operation, fd, &event) == 0 else { throw .current }
    }
}

/// An eventfd (`eventfd(2)`, non-blocking, close-on-exec) that wakes an
/// ``EventPoll`` from another thread.
package struct Wakeup: ~Copyable, Sendable {
    /// The eventfd, to register with the poll.
    package let descriptor: Int32

    /// A new eventfd.
    package init() throws(Errno) {
        descriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard descriptor >= 0 else { throw .current }
    }

    deinit { closeDescriptor(descriptor) }

    /// Makes the eventfd readable (from any thread).
    package func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(descriptor, &one, 8)
    }

    /// Makes it unreadable again, after its signals were seen.
    package func reset() {
        var count: UInt64 = 0
        _ = Glibc.read(descriptor, &count, 8)
    }
}

/// A timer descriptor on `CLOCK_MONOTONIC` (`timerfd_create(2)`,
/// non-blocking, close-on-exec): readable when it expires, for an ``EventPoll``.
package struct MonotonicTimer: ~Copyable, Sendable {
    /// The timer's descriptor, to register with the poll.
    package let descriptor: Int32

    /// A new, disarmed timer.
    package init() throws(Errno) {
        descriptor = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard descriptor >= 0 else { throw .current }
    }

    deinit { closeDescriptor(descriptor) }

    /// `CLOCK_MONOTONIC` now, in nanoseconds: the timers' clock.
    package static var now: Int64 {
        var time = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    /// Expires at `deadline` (``now``'s clock, nanoseconds; at once if past)
    /// and then every `interval` nanoseconds (0: once).
    package func arm(at deadline: Int64, interval: Int64 = 0) {
        var setting = itimerspec(it_interval: Self.duration(interval), it_value: Self.duration(max(deadline, 1)))
        _ = timerfd_settime(descriptor, Int32(TFD_TIMER_ABSTIME), &setting, nil)
    }

    /// Stops the timer.
    package func disarm() {
        var setting = itimerspec()
        _ = timerfd_settime(descriptor, 0, &setting, nil)
    }

    /// Takes its expirations, so that it is not reported again until the
    /// next; returns how many there were since the last (0 if none).
    @discardableResult
    package func acknowledge() -> UInt64 {
        var count: UInt64 = 0
        return Glibc.read(descriptor, &count, 8) == 8 ? count : 0
    }

    private static func duration(_ nanoseconds: Int64) -> Glibc.timespec {
        Glibc.timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }
}
