/// The sockets on a splice loop (``LoopSocket``s), which its thread alone
/// reads and changes. Epoll tells a socket's events under its *poll key*:
/// its slot here — found by index, with no hashing, at every event — and the
/// slot's generation, so a slot that a new socket took within one batch of
/// events gets none of the closed one's. A socket's own key
/// (``SpliceLoop/reserveID()``, reserved on any thread) finds it too,
/// for the rare lookup by key.
final class SocketTable<Socket: AnyObject>: @unchecked Sendable {
    private struct Slot {
        var socket: Socket?
        /// How often the slot was given up, in the 30 bits between a poll key's index and its marking bit.
        var generation: UInt64 = 0
    }

    @exclusivity(unchecked) private var slots: [Slot] = []
    @exclusivity(unchecked) private var freeSlots: [Int] = []
    @exclusivity(unchecked) private var slotsByKey: [UInt64: Int] = [:]
    /// The loop is ending: no more sockets are taken.
    @exclusivity(unchecked) var closed = false

    /// The bit that marks a poll key (a spliced pair's keys are `id << 1 | side`, below it).
    static var pollKeyBit: UInt64 { 1 << 62 }
    private static var generationMask: UInt64 { 0x3FFF_FFFF }

    /// Whether no socket is in the table.
    var isEmpty: Bool { slotsByKey.isEmpty }

    /// Every socket in the table.
    var all: [Socket] { slots.compactMap(\.socket) }

    /// Takes `socket`, of key `key`, in; returns its poll key.
    func insert(_ socket: Socket, key: UInt64) -> UInt64 {
        let index = freeSlots.popLast() ?? {
            slots.append(Slot())
            return slots.count - 1
        }()
        slots[index].socket = socket
        slotsByKey[key] = index
        return Self.pollKeyBit | slots[index].generation << 32 | UInt64(index)
    }

    /// Takes the socket of key `key` out (its slot is free for the next one, under another generation).
    func remove(key: UInt64) {
        guard let index = slotsByKey.removeValue(forKey: key) else { return }
        slots[index].socket = nil
        slots[index].generation = (slots[index].generation + 1) & Self.generationMask
        freeSlots.append(index)
    }

    /// The socket whose events epoll tells under `pollKey`, if it is still in the table.
    func socket(polled pollKey: UInt64) -> Socket? {
        let index = Int(truncatingIfNeeded: pollKey & 0xFFFF_FFFF)
        guard index < slots.count, slots[index].generation == (pollKey >> 32) & Self.generationMask else { return nil }
        return slots[index].socket
    }

    /// The socket of key `key`, if it is in the table.
    func socket(key: UInt64) -> Socket? {
        slotsByKey[key].flatMap { slots[$0].socket }
    }
}
