import Synchronization

/// Socket-level service load balancing: applications connect to a service
/// address (a VIP) and land on a backend, with no per-packet translation.
///
/// `connect()` (TCP and connected UDP) and `sendmsg()` (unconnected UDP) to a
/// service are rewritten to a backend chosen from the service's slot table;
/// `getpeername()` and `recvmsg()` report the service address back, so the
/// application never sees a backend. Backends are weighted; selection is
/// ``Selection/random`` or ``Selection/consistent`` (a Maglev table indexed
/// by socket cookie, so one socket keeps its backend).
///
/// Changing a service's backends writes a complete new slot table next to
/// the old one and then switches the service to it in one map update; the
/// program copies the service entry once, so a connect() racing the change
/// uses the old or the new table. The previous table is rewritten by the
/// change after next, so a program would have to stall across two control
/// plane updates to read a table in flux; a slot it cannot find is retried
/// once against the current entry.
/// A service whose backends are all drained or removed refuses connections
/// with `ECONNREFUSED`.
///
/// Services and backends are IPv4 or IPv6; a service's backends are of its
/// own family. IPv4 services are also reached from IPv6 sockets through
/// their mapped addresses (`::ffff:a.b.c.d`).
///
/// Full maps: adding a service to a full service table fails with
/// ``BPFError/Code/mapFull`` and the existing services keep working. The
/// way back for `getpeername()`/`recvmsg()` is kept per socket. A connected
/// socket's entry lives in one of two slots its socket cookie names in a
/// table (claimed and written without a lock or an allocation at
/// `connect()`), or, when other open sockets hold both, in a hash table;
/// either is freed when the socket closes. When both slots are taken and
/// the hash is full, new connections still work but report the backend's address
/// (fails open, counted in ``Counters/reverseFailures``). Unconnected UDP
/// sockets use a third table that evicts its least recently used entries
/// instead.
public final class ServiceLoadBalancer: Sendable {
    /// The transport protocol of a service.
    public enum TransportProtocol: UInt8, Sendable {
        /// TCP (`IPPROTO_TCP`).
        case tcp = 6
        /// UDP (`IPPROTO_UDP`).
        case udp = 17
    }

    /// How a backend is picked for each new socket.
    public enum Selection: Sendable {
        /// Uniformly at random over the weighted slots.
        case random
        /// By socket cookie in a weighted Maglev table.
        case consistent
    }

    /// A backend and its weight (1 or more).
    public struct Backend: Hashable, Sendable {
        /// Where connections go.
        public var endpoint: Endpoint
        /// Its share relative to the other backends.
        public var weight: UInt32

        /// Creates a backend.
        public init(_ endpoint: Endpoint, weight: UInt32 = 1) {
            self.endpoint = endpoint
            self.weight = weight
        }
    }

    /// Counters kept by the load-balancing programs.
    public struct Counters: Sendable, Equatable {
        /// `connect()` calls balanced.
        public var connects: UInt64
        /// Unconnected UDP datagrams balanced.
        public var datagrams: UInt64
        /// Connections refused because the service had no backend.
        public var refused: UInt64
        /// Lookups that raced a table switch (and were retried).
        public var slotMisses: UInt64
        /// `getpeername()`/`recvmsg()` answers translated back to the service.
        public var reverseTranslations: UInt64
        /// Connections whose reverse translation could not be recorded.
        public var reverseFailures: UInt64
        /// Reverse entries freed because their socket closed.
        public var reverseReleased: UInt64
        /// Connected sockets whose two slots other open sockets held, so
        /// that their entry went to the hash table (a failure to find room there
        /// is a ``reverseFailures``).
        public var reverseSpilled: UInt64
    }

    private struct ServiceState {
        var id: UInt32
        var selection: Selection
        var backends: [Backend]
        var draining: Set<Endpoint>
        var generation: UInt32
        /// Slots written in each of the two alternating tables.
        var slotCounts: [UInt32] = [0, 0]
    }

    /// The loaded `service_lb` object and its typed maps.
    public let datapath: ServiceLbObject.Loaded
    /// The cgroup the programs are attached to.
    public let cgroup: Cgroup
    private let links: [BPFLink]
    private let state = Mutex<(services: [ServiceLbObject.ServiceKey: ServiceState], nextID: UInt32)>(([:], 1))
    private static let slotsPerGeneration: UInt32 = 2_048

    /// Loads the programs and attaches them to `cgroup` (and so its descendants).
    ///
    /// - Parameters:
    ///   - cgroup: the workloads whose connections are balanced.
    ///   - serviceCapacity: services (address, port and protocol) in all.
    ///   - slotCapacity: backend slots across all services, counting both
    ///     tables a service alternates between: a random service uses twice
    ///     the sum of its weights (at most 2 × 2,048), a consistent one
    ///     2 × 1,021 (its Maglev tables).
    ///   - reverseCapacity: open balanced connected sockets (TCP, connected
    ///     UDP) whose service address is remembered — the slot table has
    ///     this many slots rounded up to a power of two, and the hash for
    ///     sockets whose two slots are taken this many entries — and as
    ///     many (socket, backend) pairs of unconnected UDP sockets.
    public init(attachingTo cgroup: Cgroup, serviceCapacity: Int = 65_536, slotCapacity: Int = 262_144,
                reverseCapacity: Int = 65_536) throws(BPFError) {
        guard reverseCapacity > 0, reverseCapacity <= 1 << 24 else {
            throw BPFError(.invalidArgument, operation: "load service load balancer", subject: "reverseCapacity \(reverseCapacity)",
                           detail: "between 1 and 16,777,216 sockets")
        }
        let skeleton = try ServiceLbObject.open()
        try skeleton.maps.services.setMaxEntries(serviceCapacity)
        try skeleton.maps.slots.setMaxEntries(slotCapacity)
        let connectionSlots = 1 << (Int.bitWidth - (reverseCapacity - 1).leadingZeroBitCount)
        try skeleton.maps.connectionSlots.setMaxEntries(connectionSlots)
        try skeleton.globals.connectionSlotMask.set(UInt64(connectionSlots - 1))
        try skeleton.maps.spilledTranslations.setMaxEntries(reverseCapacity)
        try skeleton.maps.datagramTranslations.setMaxEntries(reverseCapacity)
        datapath = try skeleton.load()
        self.cgroup = cgroup
        let programs = datapath.programs
        links = [
            // Release first: a socket balanced before it were attached would hold its slot forever.
            try programs.releaseTranslation.attach(to: cgroup),
            try programs.balanceConnect4.attach(to: cgroup), try programs.balanceSendmsg4.attach(to: cgroup),
            try programs.translateRecvmsg4.attach(to: cgroup), try programs.translateGetpeername4.attach(to: cgroup),
            try programs.balanceConnect6.attach(to: cgroup), try programs.balanceSendmsg6.attach(to: cgroup),
            try programs.translateRecvmsg6.attach(to: cgroup), try programs.translateGetpeername6.attach(to: cgroup),
        ]
    }

    /// Adds a service. Fails with ``BPFError/Code/keyExists`` if it exists,
    /// and with ``BPFError/Code/mapFull`` when the service or slot table is
    /// full — then nothing of the new service remains in the kernel.
    public func addService(_ address: Endpoint, protocol transport: TransportProtocol = .tcp, selection: Selection = .random, backends: [Backend]) throws(BPFError) {
        let key = try serviceKey(address, transport, operation: "add service")
        try validate(backends, for: address)
        try state.withLock { (state) throws(BPFError) in
            guard state.services[key] == nil else {
                throw BPFError(.keyExists, operation: "add service", subject: "\(address)/\(transport)", detail: "the service already exists; use setBackends to change it")
            }
            var service = ServiceState(id: state.nextID, selection: selection, backends: backends, draining: [], generation: 0)
            state.nextID += 1
            do throws(BPFError) {
                try publish(&service, key: key)
            } catch {
                // The service entry was never written (it is the last step), so
                // no program can use these slots: take them back out.
                for table in 0..<2 { try? deleteSlots(service.id, table: UInt32(table), from: 0, to: service.slotCounts[table]) }
                throw error
            }
            state.services[key] = service
        }
    }

    /// Whether the service exists.
    public func contains(service address: Endpoint, protocol transport: TransportProtocol = .tcp) -> Bool {
        guard let key = try? serviceKey(address, transport, operation: "find service") else { return false }
        return state.withLock { $0.services[key] != nil }
    }

    /// Replaces a service's backends atomically.
    public func setBackends(_ backends: [Backend], for address: Endpoint, protocol transport: TransportProtocol = .tcp) throws(BPFError) {
        try validate(backends, for: address)
        try update(address, transport, operation: "set backends") { $0.backends = backends; $0.draining = [] }
    }

    /// Stops sending new connections to a backend; existing ones are untouched.
    public func drain(_ backend: Endpoint, from address: Endpoint, protocol transport: TransportProtocol = .tcp) throws(BPFError) {
        try update(address, transport, operation: "drain backend") { $0.draining.insert(backend) }
    }

    /// Returns a drained backend to service.
    public func undrain(_ backend: Endpoint, from address: Endpoint, protocol transport: TransportProtocol = .tcp) throws(BPFError) {
        try update(address, transport, operation: "undrain backend") { $0.draining.remove(backend) }
    }

    /// Removes a service; connections to its address then go where they are addressed.
    public func removeService(_ address: Endpoint, protocol transport: TransportProtocol = .tcp) throws(BPFError) {
        let key = try serviceKey(address, transport, operation: "remove service")
        try state.withLock { (state) throws(BPFError) in
            guard let service = state.services[key] else {
                throw BPFError(.keyNotFound, operation: "remove service", subject: "\(address)/\(transport)")
            }
            // Kernel first: if this fails, the service is still known and can be removed again.
            try datapath.maps.services.remove(key)
            for table in 0..<2 { try deleteSlots(service.id, table: UInt32(table), from: 0, to: service.slotCounts[table]) }
            state.services.removeValue(forKey: key)
        }
    }

    /// Reads the counters.
    public func counters() throws(BPFError) -> Counters {
        let values = try datapath.maps.lbCounters.values()
        func value(_ slot: ServiceLbObject.LbCounter) -> UInt64 { values[Int(slot.rawValue)] }
        return Counters(connects: value(.connectsBalanced), datagrams: value(.datagramsBalanced), refused: value(.noBackend),
                        slotMisses: value(.slotMissing), reverseTranslations: value(.reverseTranslated), reverseFailures: value(.reverseFailed),
                        reverseReleased: value(.reverseReleased), reverseSpilled: value(.reverseSpilled))
    }

    /// The sockets of which the programs currently keep a reverse
    /// translation for `getpeername()`, by socket cookie: every open
    /// balanced connected socket except those that found no room (counted
    /// in ``Counters/reverseFailures``), read from both tables.
    public func rememberedSockets() throws(BPFError) -> Set<UInt64> {
        var cookies = Set(try datapath.maps.connectionSlots.values().lazy.map(\.cookie).filter { $0 != 0 })
        cookies.formUnion(try datapath.maps.spilledTranslations.keys())
        return cookies
    }

    /// Detaches the programs now, the release program last (a socket balanced
    /// meanwhile still frees its slot).
    public func detach() {
        for link in links.reversed() { link.close() }
    }

    // MARK: Internals

    private func serviceKey(_ address: Endpoint, _ transport: TransportProtocol, operation: BPFError.Operation) throws(BPFError) -> ServiceLbObject.ServiceKey {
        guard address.port != 0 else {
            throw BPFError(.invalidArgument, operation: operation, subject: "\(address)", detail: "a service needs a port")
        }
        return ServiceLbObject.ServiceKey(address: address.address.networkOrderWords, port: address.port.bigEndian, protocol: transport.rawValue)
    }

    /// Slots per backend in proportion to the weights (largest remainder),
    /// at least one each, `slots` in all at most.
    static func apportion(_ weights: [UInt32], slots: Int) -> [Int] {
        let total = weights.reduce(0) { $0 + UInt64($1) }
        guard total > 0 else { return [] }
        if total <= UInt64(slots) { return weights.map(Int.init) }
        let spare = slots - weights.count
        let shares = weights.map { Double($0) / Double(total) * Double(spare) }
        var counts = shares.map { 1 + Int($0) }
        var left = slots - counts.reduce(0, +)
        for index in shares.indices.sorted(by: { shares[$0] - shares[$0].rounded(.down) > shares[$1] - shares[$1].rounded(.down) }) where left > 0 {
            counts[index] += 1
            left -= 1
        }
        return counts
    }

    private func validate(_ backends: [Backend], for address: Endpoint) throws(BPFError) {
        guard backends.count <= Int(Self.slotsPerGeneration) else {
            throw BPFError(.invalidArgument, operation: "set backends", subject: "\(address)",
                           detail: "\(backends.count) backends; a service holds at most \(Self.slotsPerGeneration)")
        }
        for backend in backends where backend.endpoint.address.isIPv4 != address.address.isIPv4 {
            throw BPFError(.invalidArgument, operation: "set backends", subject: "\(address)",
                           detail: "backend \(backend.endpoint) is not of the service's address family; a socket cannot change family at connect()")
        }
        for backend in backends where backend.weight == 0 || backend.endpoint.port == 0 {
            throw BPFError(.invalidArgument, operation: "set backends", subject: "\(address)",
                           detail: "backend \(backend.endpoint) has weight \(backend.weight); weights start at 1 and ports at 1 (drain a backend instead of weighting it 0)")
        }
        guard Set(backends.map(\.endpoint)).count == backends.count else {
            throw BPFError(.invalidArgument, operation: "set backends", subject: "\(address)", detail: "a backend is listed twice")
        }
    }

    private func update(_ address: Endpoint, _ transport: TransportProtocol, operation: BPFError.Operation, _ change: (inout ServiceState) -> Void) throws(BPFError) {
        let key = try serviceKey(address, transport, operation: operation)
        try state.withLock { (state) throws(BPFError) in
            guard var service = state.services[key] else {
                throw BPFError(.keyNotFound, operation: operation, subject: "\(address)/\(transport)", detail: "no such service")
            }
            change(&service)
            try publish(&service, key: key)
            state.services[key] = service
        }
    }

    /// Writes the service's slot table as a new generation, then points the service at it.
    private func publish(_ service: inout ServiceState, key: ServiceLbObject.ServiceKey) throws(BPFError) {
        let active = service.backends.filter { !service.draining.contains($0.endpoint) }
        let table: [Backend]
        switch service.selection {
        case .consistent:
            table = MaglevTable.build(active.map { ("\($0.endpoint)", $0.weight) }).map { active[$0] }
        case .random:
            table = zip(active, Self.apportion(active.map(\.weight), slots: Int(Self.slotsPerGeneration))).flatMap { repeatElement($0, count: $1) }
        }
        let generation = service.generation &+ 1
        let tableIndex = generation % 2
        let first = tableIndex * Self.slotsPerGeneration
        let entries = table.prefix(Int(Self.slotsPerGeneration)).enumerated().map { index, backend in
            (key: ServiceLbObject.SlotKey(serviceId: service.id, slot: first + UInt32(index)),
             value: ServiceLbObject.Backend(address: backend.endpoint.address.networkOrderWords, port: backend.endpoint.port.bigEndian))
        }
        // Count the slots this table may hold before writing them, so a write that
        // fails halfway is still cleaned up by the next change.
        service.slotCounts[Int(tableIndex)] = max(service.slotCounts[Int(tableIndex)], UInt32(entries.count))
        if !entries.isEmpty { try datapath.maps.slots.insert(contentsOf: entries) }
        let flags = service.selection == .consistent ? ServiceLbObject.ServiceFlags.serviceConsistent.rawValue : 0
        try datapath.maps.services.insert(
            .init(id: service.id, firstSlot: first, slotCount: UInt32(entries.count), flags: flags), for: key)
        // This table held the generation before the previous one, which no
        // reader can still be using; drop its slots beyond the new count.
        try deleteSlots(service.id, table: tableIndex, from: UInt32(entries.count), to: service.slotCounts[Int(tableIndex)])
        service.slotCounts[Int(tableIndex)] = UInt32(entries.count)
        service.generation = generation
    }

    private func deleteSlots(_ id: UInt32, table: UInt32, from start: UInt32, to end: UInt32) throws(BPFError) {
        guard start < end else { return }
        let first = table * Self.slotsPerGeneration
        try datapath.maps.slots.remove(contentsOf: (start..<end).map { ServiceLbObject.SlotKey(serviceId: id, slot: first + $0) })
    }
}
