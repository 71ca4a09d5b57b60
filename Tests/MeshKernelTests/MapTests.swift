import Foundation
import MeshKernel
import MeshTestSupport
import Testing

@Suite("Typed maps on the real kernel", .kernel)
struct MapTests {
    let object: BPFObject

    init() throws {
        object = try BPFObject.open(.maps)
        try object.load()
    }

    @Test("hash map: insert modes, lookup, remove, missing keys and a full map are distinct")
    func hashMap() throws {
        let flows = try HashMap<FlowKey, FlowStats>(object.map("flows"))
        let key = FlowKey(address: 0x0A00_0001, port: 443, protocol: 6)
        let stats = FlowStats(packets: 3, bytes: 1500, lastSeen: 7, flags: 1)
        #expect(try flows.lookup(key) == nil)
        try flows.insert(stats, for: key, mode: .noExist)
        #expect(try flows.lookup(key) == stats)
        let exists = try #require(throws: BPFError.self) { try flows.insert(stats, for: key, mode: .noExist) }
        #expect(exists.code == .keyExists)
        #expect(exists.errno == .fileExists)
        var updated = stats
        updated.packets = 4
        try flows.insert(updated, for: key, mode: .exist)
        #expect(try flows.lookup(key)?.packets == 4)
        let absent = FlowKey(address: 1, port: 1, protocol: 17)
        let missing = try #require(throws: BPFError.self) { try flows.insert(stats, for: absent, mode: .exist) }
        #expect(missing.code == .keyNotFound)
        #expect(try flows.remove(key))
        #expect(try !flows.remove(key))

        let tiny = try HashMap<UInt32, UInt64>(object.map("tiny_hash"))
        for index in 0..<4 { try tiny.insert(UInt64(index), for: UInt32(index)) }
        let full = try #require(throws: BPFError.self) { try tiny.insert(9, for: 99) }
        #expect(full.code == .mapFull)
        #expect(full.errno == .argumentListTooLong)
        // Nothing was lost: the four entries are intact, and replacing one still works.
        #expect(try tiny.entries().count == 4)
        try tiny.insert(42, for: 2)
        #expect(try tiny.lookup(2) == 42)
    }

    @Test("iteration and batch operations agree on every entry")
    func iterationAndBatch() throws {
        let flows = try HashMap<FlowKey, FlowStats>(object.map("flows"))
        let entries: [(key: FlowKey, value: FlowStats)] = (0..<600).map { (index: Int) -> (key: FlowKey, value: FlowStats) in
            let key = FlowKey(address: UInt32(index), port: UInt16(index), protocol: 6)
            let value = FlowStats(packets: UInt64(index), bytes: UInt64(index * 10), lastSeen: UInt32(index), flags: 0)
            return (key: key, value: value)
        }
        #expect(try flows.insert(contentsOf: entries) == 600)
        let keys = try flows.keys()
        #expect(Set(keys) == Set(entries.map(\.key)))
        let read = try flows.entries(chunk: 64)
        #expect(read.count == 600)
        // A chunk smaller than a hash bucket grows instead of failing with ENOSPC.
        #expect(try flows.entries(chunk: 1).count == 600)
        for (key, value) in read { #expect(value.packets == UInt64(key.address)) }
        #expect(try flows.remove(contentsOf: Array(entries.prefix(100).map(\.key))) == 100)
        #expect(try flows.keys().count == 500)
        let missing = try #require(throws: BPFError.self) { try flows.remove(contentsOf: [entries[0].key]) }
        #expect(missing.code == .keyNotFound)
        let drained = try flows.drain()
        #expect(drained.count == 500)
        #expect(try flows.keys().isEmpty)
    }

    @Test("LRU hash evicts instead of failing when full")
    func lruHash() throws {
        let recent = try HashMap<UInt64, UInt64>(object.map("recent"))
        for index in 0..<1_000 as Range<UInt64> { try recent.insert(index, for: index) }
        let count = try recent.keys().count
        #expect(count > 0 && count <= 128)
        #expect(try recent.lookup(999) == 999)
    }

    @Test("array map: values by index, batch read, out-of-range index is an error")
    func arrayMap() throws {
        let slots = try ArrayMap<FlowStats>(object.map("slots"))
        #expect(slots.count == 16)
        try slots.set(FlowStats(packets: 1, bytes: 2, lastSeen: 3, flags: 4), at: 5)
        #expect(try slots.value(at: 5).bytes == 2)
        #expect(try slots.value(at: 6).bytes == 0)
        try slots.set(contentsOf: [(0, FlowStats(packets: 9, bytes: 9, lastSeen: 9, flags: 9))])
        let values = try slots.values()
        #expect(values.count == 16)
        #expect(values[0].packets == 9 && values[5].packets == 1)
        let error = try #require(throws: BPFError.self) { try slots.set(FlowStats(packets: 0, bytes: 0, lastSeen: 0, flags: 0), at: 16) }
        #expect(error.code == .invalidArgument)
        #expect(throws: BPFError.self) { try slots.value(at: 99) }
    }

    @Test("per-CPU maps hold one value per possible CPU, written by a program")
    func perCPU() throws {
        let counters = try PerCPUArrayMap<UInt64>(object.map("per_cpu_counters"))
        #expect(counters.cpuCount == Int(try String(contentsOfFile: "/sys/devices/system/cpu/possible", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "-").last.map { Int($0)! + 1 } ?? 1))
        let bump = try object.program("bump_counters")
        for _ in 0..<10 {
            var args = ProduceArgs(count: 5, kind: 2, firstSequence: 0)
            try bump.testRun(context: &args)
        }
        #expect(try counters.sum(at: 2) == 50)
        #expect(try counters.values(at: 2).count == counters.cpuCount)
        try counters.set(Array(repeating: 1, count: counters.cpuCount), at: 1)
        #expect(try counters.sum(at: 1) == UInt64(counters.cpuCount))

        let hash = try PerCPUHashMap<UInt32, UInt32>(object.map("per_cpu_hash"))
        let values = (0..<hash.cpuCount).map { UInt32($0 * 10 + 1) }
        try hash.insert(values, for: 7)
        #expect(try hash.lookup(7) == values)
        try hash.insert(5, onEveryCPUFor: 8)
        #expect(try hash.lookup(8) == Array(repeating: 5, count: hash.cpuCount))
        let entries = try hash.entries()
        #expect(entries.count == 2)
        #expect(entries.first { $0.key == 7 }?.values == values)
        let wrong = try #require(throws: BPFError.self) { try hash.insert([1], for: 9) }
        #expect(wrong.code == .invalidArgument || hash.cpuCount == 1)
    }

    @Test("LPM trie answers with the longest matching prefix")
    func lpmTrie() throws {
        let cidrs = try LPMTrieMap<UInt32, UInt32>(object.map("cidrs"))
        func ip(_ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32) -> UInt32 { (a << 24 | b << 16 | c << 8 | d).bigEndian }
        try cidrs.insert(8, for: LPMKey(prefixLength: 8, address: ip(10, 0, 0, 0)))
        try cidrs.insert(24, for: LPMKey(prefixLength: 24, address: ip(10, 1, 2, 0)))
        #expect(try cidrs.longestMatch(ip(10, 1, 2, 3)) == 24)
        #expect(try cidrs.longestMatch(ip(10, 9, 9, 9)) == 8)
        #expect(try cidrs.longestMatch(ip(192, 168, 0, 1)) == nil)
        #expect(try cidrs.prefixes().count == 2)
        #expect(try cidrs.remove(LPMKey(prefixLength: 24, address: ip(10, 1, 2, 0))))
        #expect(try cidrs.longestMatch(ip(10, 1, 2, 3)) == 8)
        let tooLong = try #require(throws: BPFError.self) { try cidrs.insert(1, for: LPMKey(prefixLength: 33, address: 0)) }
        #expect(tooLong.code == .invalidArgument)
    }

    @Test("sockhash and sockmap take real connected sockets and report their cookies")
    func sockMaps() throws {
        let (client, server, listener) = try connectedTCPPair()
        defer { [client, server, listener].forEach { close($0) } }
        let sockets = try SockHash<UInt32>(object.map("sockets"))
        try sockets.insert(socket: client, for: 1)
        try sockets.insert(socket: server, for: 2)
        var cookie: UInt64 = 0
        var length = socklen_t(8)
        getsockopt(client, SOL_SOCKET, 57 /* SO_COOKIE */, &cookie, &length)
        #expect(try sockets.cookie(for: 1) == cookie)
        #expect(try Set(sockets.keys()) == [1, 2])
        #expect(try sockets.remove(1))
        #expect(try sockets.cookie(for: 1) == nil)
        let notSocket = try #require(throws: BPFError.self) { try sockets.insert(socket: 0, for: 3) }
        #expect(notSocket.errno != nil)

        let slots = try SockMap(object.map("socket_slots"))
        try slots.insert(socket: server, at: 0)
        #expect(try slots.cookie(at: 0) != nil)
        #expect(try slots.remove(at: 0))
    }

    @Test("a Swift type whose size differs from the map's is refused, naming both sizes and the BTF type")
    func sizeMismatch() throws {
        let error = try #require(throws: BPFError.self) { try HashMap<UInt16, FlowStats>(object.map("flows")) }
        #expect(error.code == .sizeMismatch)
        let detail = try #require(error.detail)
        #expect(detail.contains("8-byte keys"))
        #expect(detail.contains("struct flow_key"))
        #expect(detail.contains("UInt16 is 2 bytes"))
        let valueError = try #require(throws: BPFError.self) { try HashMap<FlowKey, UInt64>(object.map("flows")) }
        #expect(valueError.detail?.contains("24-byte values") == true)
        let typeError = try #require(throws: BPFError.self) { try ArrayMap<UInt64>(object.map("flows")) }
        #expect(typeError.code == .invalidArgument)
        #expect(typeError.detail?.contains("hash") == true)
    }

    @Test("a map created on its own works like an object's map")
    func standaloneMap() throws {
        let map = try BPFMap.create(.hash, name: uniqueName("map"), keySize: 4, valueSize: 8, maxEntries: 8)
        let typed = try HashMap<UInt32, UInt64>(map)
        try typed.insert(77, for: 1)
        #expect(try typed.lookup(1) == 77)
        #expect(map.maxEntries == 8)
        let bad = try #require(throws: BPFError.self) { try BPFMap.create(.hash, name: "bad", keySize: 0, valueSize: 8, maxEntries: 8) }
        #expect(bad.errno == .invalidArgument)
    }
}
