import MeshKernel

// Swift mirrors of bpf/include/test_types.h. Creating typed maps over them
// checks their sizes against the object's BTF.

struct FlowKey: BitwiseCopyable, Hashable, Sendable {
    var address: UInt32
    var port: UInt16
    var proto: UInt8
    var pad: UInt8 = 0
}

struct FlowStats: BitwiseCopyable, Equatable, Sendable {
    var packets: UInt64
    var bytes: UInt64
    var lastSeen: UInt32
    var flags: UInt32
}

struct TestEvent: BitwiseCopyable, Sendable {
    var sequence: UInt64
    var value: UInt64
    var cpu: UInt32
    var kind: UInt32
}

struct ProduceArgs: BitwiseCopyable {
    var count: UInt32
    var kind: UInt32
    var firstSequence: UInt64
}

/// Slots of the `hits` array in attach_points.bpf.c.
enum Hit: UInt32 {
    case sockOps, connect4, connect6, sendmsg4, sendmsg6, recvmsg4, recvmsg6, getpeername4, getpeername6
    case getsockopt, sockCreate, skbIngress, skbEgress, skMsg, skSKB, rawTracepoint, btfTracepoint
    case tracepoint, uprobe, uretprobe, kprobe, kretprobe
}
