@testable import MeshProxy
import Testing

/// The splice loop's table of sockets, by the key epoll tells their events under and by their own key.
@Suite("A splice loop's socket table")
struct SocketTableTests {
    private final class Socket {}

    @Test("a socket is found by its poll key and its own key until it is taken out; a slot taken again is under another poll key, and the old one finds nothing")
    func slotsAndGenerations() {
        let table = SocketTable<Socket>()
        let first = Socket(), second = Socket(), third = Socket()
        let firstPoll = table.insert(first, key: 101)
        let secondPoll = table.insert(second, key: 102)
        #expect(firstPoll != secondPoll)
        #expect([firstPoll, secondPoll].allSatisfy { $0 & SocketTable<Socket>.pollKeyBit != 0 }, "apart from the loop's own keys and pairs'")
        #expect(table.socket(polled: firstPoll) === first && table.socket(polled: secondPoll) === second)
        #expect(table.socket(key: 101) === first && table.socket(key: 102) === second)
        table.remove(key: 101)
        #expect(table.socket(polled: firstPoll) == nil && table.socket(key: 101) == nil)
        // The freed slot is taken again: an event for the closed socket, still in epoll's batch, finds nothing.
        let thirdPoll = table.insert(third, key: 103)
        #expect(thirdPoll & 0xFFFF_FFFF == firstPoll & 0xFFFF_FFFF, "the same slot")
        #expect(thirdPoll != firstPoll)
        #expect(table.socket(polled: firstPoll) == nil && table.socket(polled: thirdPoll) === third)
        #expect(table.all.count == 2 && !table.isEmpty)
        table.remove(key: 102)
        table.remove(key: 103)
        table.remove(key: 103)   // (twice: nothing more happens)
        #expect(table.isEmpty && table.all.isEmpty && table.socket(polled: thirdPoll) == nil)
        // A key that was never a poll key: past the slots, or in no slot's generation.
        #expect(table.socket(polled: SocketTable<Socket>.pollKeyBit | 7) == nil)
    }
}
