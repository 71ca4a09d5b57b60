import Foundation
import MeshKernel
import MeshTestSupport
import Testing

/// Exercises every socket hook of attach_points.bpf.c from a process in the cgroup.
private let socketWorkout = #"""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
c.sendall(b"x"); s.recv(1); c.getpeername(); c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen()
c6 = socket.create_connection(l6.getsockname()[:2]); s6, _ = l6.accept(); c6.getpeername()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); u.sendto(b"y", u.getsockname()); u.recvfrom(10)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 0)); u6.sendto(b"y", u6.getsockname()[:2]); u6.recvfrom(10)
print("ok")
"""#

@Suite("Links: attach, run, detach on release", .kernel, .serialized)
struct LinkTests {
    let object: BPFObject
    let hits: ArrayMap<UInt64>

    init() throws {
        object = try BPFObject.open(.attachPoints)
        try object.load()
        hits = try ArrayMap(object.map("hits"))
    }

    func count(_ hit: Hit) throws -> UInt64 { try hits.value(at: hit.rawValue) }

    /// Whether, within a deadline, running `trigger` no longer changes the counter of `hit`.
    func stopsCounting(_ hit: Hit, _ trigger: () -> Void) throws -> Bool {
        try eventually {
            let before = try count(hit)
            trigger()
            return try count(hit) == before
        }
    }

    @Test("every cgroup hook attaches through a link, runs, and is gone from the cgroup after release")
    func cgroupHooks() throws {
        let hooks: [(String, AttachType, Hit)] = [
            ("on_sock_ops", .cgroupSockOps, .sockOps), ("on_connect4", .cgroupConnect4, .connect4),
            ("on_connect6", .cgroupConnect6, .connect6), ("on_sendmsg4", .cgroupSendmsg4, .sendmsg4),
            ("on_sendmsg6", .cgroupSendmsg6, .sendmsg6), ("on_recvmsg4", .cgroupRecvmsg4, .recvmsg4),
            ("on_recvmsg6", .cgroupRecvmsg6, .recvmsg6), ("on_getpeername4", .cgroupGetpeername4, .getpeername4),
            ("on_getpeername6", .cgroupGetpeername6, .getpeername6), ("on_getsockopt", .cgroupGetsockopt, .getsockopt),
            ("on_sock_create", .cgroupSockCreate, .sockCreate), ("on_skb_ingress", .cgroupInetIngress, .skbIngress),
            ("on_skb_egress", .cgroupInetEgress, .skbEgress),
        ]
        try withCgroup("lnk") { cgroup in
            var links: [BPFLink] = []
            var linkIDs: [UInt32] = []
            for (name, type, _) in hooks {
                let program = try object.program(name)
                let link = try program.attach(to: cgroup)
                links.append(link)
                linkIDs.append(try #require(link.id))
                #expect(try cgroup.attachedProgramIDs(type) == [try #require(program.id)], "\(name)")
            }
            let result = try runInCgroup(cgroup.path, "python3 -c '\(socketWorkout)'").check()
            #expect(result.output.contains("ok"))
            for (name, _, hit) in hooks { #expect(try count(hit) > 0, "\(name) did not run") }

            links.removeAll()  // releasing the links detaches every program
            for (name, type, _) in hooks {
                #expect(try eventually { try cgroup.attachedProgramIDs(type).isEmpty }, "\(name) still attached")
            }
            #expect(eventually { linkIDs.allSatisfy { !KernelObjects.linkExists(id: $0) } })
            // Detached hooks no longer run.
            let before = try count(.connect4)
            try runInCgroup(cgroup.path, "python3 -c '\(socketWorkout)'").check()
            #expect(try count(.connect4) == before)
        }
    }

    @Test("sk_msg and sk_skb attach to a sockhash through real kernel links and detach on close")
    func sockMapLinks() throws {
        let sockets = try SockHash<UInt32>(object.map("sockets"))
        let msgLink = try object.program("on_sk_msg").attach(toSockMap: sockets.map)
        let skbLink = try object.program("on_sk_skb").attach(toSockMap: sockets.map)
        let ids = [try #require(msgLink.id, "sk_msg attached without a kernel link"), try #require(skbLink.id)]
        #expect(msgLink.programID == (try object.program("on_sk_msg").id))

        let (client, server, listener) = try connectedTCPPair()
        defer { [client, server, listener].forEach { close($0) } }
        try sockets.insert(socket: client, for: 1)
        try sockets.insert(socket: server, for: 2)
        let message = Array("through the verdict programs".utf8)
        #expect(write(client, message, message.count) == message.count)
        var received = [UInt8](repeating: 0, count: message.count)
        #expect(recv(server, &received, received.count, Int32(MSG_WAITALL)) == message.count)
        #expect(received == message)
        #expect(try count(.skMsg) > 0)
        #expect(try count(.skSkb) > 0)

        msgLink.close()
        skbLink.close()
        #expect(eventually { ids.allSatisfy { !KernelObjects.linkExists(id: $0) } })
        // Sockets keep the verdict programs they were inserted under; once
        // re-inserted after the detach, no program runs for them.
        try sockets.remove(1)
        try sockets.remove(2)
        try sockets.insert(socket: client, for: 1)
        try sockets.insert(socket: server, for: 2)
        let before = try count(.skMsg)
        #expect(write(client, message, message.count) == message.count)
        #expect(recv(server, &received, received.count, Int32(MSG_WAITALL)) == message.count)
        #expect(try count(.skMsg) == before, "sk_msg still runs after its link closed")
        let wrong = try #require(throws: BPFError.self) { try object.program("on_sk_msg").attach(toSockMap: hits.map) }
        #expect(wrong.code == .invalidArgument)
    }

    @Test("raw_tp, tp_btf and tracepoint programs attach, run and detach")
    func tracepoints() throws {
        for (name, hit) in [("on_raw_tp", Hit.rawTp), ("on_tp_btf", .tpBtf), ("on_tracepoint", .tracepoint)] {
            let program = try object.program(name)
            let link: BPFLink
            switch name {
            case "on_raw_tp": link = try program.attachRawTracepoint()
            case "on_tp_btf": link = try program.attachBTFTracepoint()
            default: link = try program.attachTracepoint(category: "raw_syscalls", name: "sys_enter")
            }
            let id = try #require(link.id)
            #expect(eventually { _ = getpid(); return (try? count(hit)) ?? 0 > 0 }, "\(name) never ran")
            link.close()
            #expect(eventually { !KernelObjects.linkExists(id: id) })
            #expect(try stopsCounting(hit) { _ = getppid() }, "\(name) still runs after detach")
        }
        let wrong = try #require(throws: BPFError.self) { try object.program("on_connect4").attachRawTracepoint() }
        #expect(wrong.code == .invalidArgument)
    }

    @Test("uprobe and uretprobe on a libc function count exactly this process's calls")
    func uprobes() throws {
        let maps = String(decoding: try #require(FileHandle(forReadingAtPath: "/proc/self/maps")).readDataToEndOfFile(), as: UTF8.self)
        let libc = try #require(maps.split(separator: "\n").compactMap { $0.split(separator: " ").last }
            .first { $0.hasSuffix("/libc.so.6") }).description
        let pid = getpid()
        let entry = try object.program("on_uprobe").attachUprobe(binary: libc, function: "getpid", pid: pid)
        let exit = try object.program("on_uprobe").attachUprobe(binary: libc, function: "getpid", returnProbe: true, pid: pid)
        let retEntry = try object.program("on_uretprobe").attachUprobe(binary: libc, function: "getpid", returnProbe: true, pid: pid)
        let before = (try count(.uprobe), try count(.uretprobe))
        for _ in 0..<100 { _ = getpid() }
        let after = (try count(.uprobe), try count(.uretprobe))
        #expect(after.0 - before.0 >= 200)   // entry + return probe, both on on_uprobe
        #expect(after.1 - before.1 >= 100)
        [entry, exit, retEntry].forEach { $0.close() }
        // Perf-event detaches may complete after close() returns: wait until calls stop counting.
        #expect(try stopsCounting(.uprobe) { for _ in 0..<100 { _ = getpid() } })
        let missing = try #require(throws: BPFError.self) {
            try object.program("on_uprobe").attachUprobe(binary: libc, function: "no_such_function_here", pid: pid)
        }
        #expect(missing.errno != nil)
    }

    @Test("kprobes: a typed not-supported error on a kernel without CONFIG_KPROBES, a working link elsewhere")
    func kprobes() throws {
        let kernelHasKprobes = FileManager.default.fileExists(atPath: "/sys/bus/event_source/devices/kprobe")
        for (name, isReturn) in [("on_kprobe", false), ("on_kretprobe", true)] {
            if kernelHasKprobes {
                let link = try object.program(name).attachKprobe(function: "do_sys_openat2", returnProbe: isReturn)
                #expect(link.isOpen)
            } else {
                let error = try #require(throws: BPFError.self) {
                    try object.program(name).attachKprobe(function: "do_sys_openat2", returnProbe: isReturn)
                }
                #expect(error.code == .notSupportedByKernel)
                #expect(error.hint?.contains("CONFIG_KPROBES") == true)
            }
        }
    }

    @Test("a pinned link outlives its handle, reopens from the pin, and detaches once unpinned")
    func pinnedLink() throws {
        try withCgroup("pln") { cgroup in
            try withPinFolder { folder in
                let program = try object.program("on_connect4")
                let programID = try #require(program.id)
                do {
                    let link = try program.attach(to: cgroup)
                    try link.pin(in: folder, as: "connect4")
                }
                // The handle is gone; the pin keeps the program attached.
                #expect(try cgroup.attachedProgramIDs(.cgroupConnect4) == [programID])
                let reopened = try BPFLink.open(pinned: folder.path(for: "connect4"))
                #expect(reopened.programID == programID)
                try BPFLink.unpin(at: folder.path(for: "connect4"))
                #expect(try cgroup.attachedProgramIDs(.cgroupConnect4) == [programID], "still held by the reopened handle")
                reopened.close()
                #expect(try eventually { try cgroup.attachedProgramIDs(.cgroupConnect4).isEmpty })
                let notALink = try #require(throws: BPFError.self) { try BPFLink.open(pinned: folder.path + "/missing") }
                #expect(notALink.errno == .noSuchFileOrDirectory)
                // A pin of the wrong kind is named as such, not read as garbage.
                try hits.map.pin(at: folder.path(for: "hits"))
                let mapAsLink = try #require(throws: BPFError.self) { try BPFLink.open(pinned: folder.path(for: "hits")) }
                #expect(mapAsLink.detail == "the pin is not a link (it is anon_inode:bpf-map)")
            }
        }
    }
}
