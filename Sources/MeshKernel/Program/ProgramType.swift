import CBPFShim

/// The kind of a BPF program (`enum bpf_prog_type`), which fixes its context,
/// the helpers it may call, and where it can attach.
public struct ProgramType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The kernel's `bpf_prog_type` value.
    public let rawValue: UInt32
    /// Wraps a kernel `bpf_prog_type` value.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ type: bpf_prog_type) { self.rawValue = type.rawValue }

    /// `BPF_PROG_TYPE_SOCKET_FILTER`
    public static let socketFilter = ProgramType(BPF_PROG_TYPE_SOCKET_FILTER)
    /// `BPF_PROG_TYPE_KPROBE` (kprobes and uprobes)
    public static let kprobe = ProgramType(BPF_PROG_TYPE_KPROBE)
    /// `BPF_PROG_TYPE_SCHED_CLS` (tc)
    public static let schedCls = ProgramType(BPF_PROG_TYPE_SCHED_CLS)
    /// `BPF_PROG_TYPE_TRACEPOINT`
    public static let tracepoint = ProgramType(BPF_PROG_TYPE_TRACEPOINT)
    /// `BPF_PROG_TYPE_XDP`
    public static let xdp = ProgramType(BPF_PROG_TYPE_XDP)
    /// `BPF_PROG_TYPE_CGROUP_SKB`
    public static let cgroupSKB = ProgramType(BPF_PROG_TYPE_CGROUP_SKB)
    /// `BPF_PROG_TYPE_CGROUP_SOCK` (`sock_create`, `post_bind`)
    public static let cgroupSock = ProgramType(BPF_PROG_TYPE_CGROUP_SOCK)
    /// `BPF_PROG_TYPE_SOCK_OPS`
    public static let sockOps = ProgramType(BPF_PROG_TYPE_SOCK_OPS)
    /// `BPF_PROG_TYPE_SK_SKB`
    public static let skSKB = ProgramType(BPF_PROG_TYPE_SK_SKB)
    /// `BPF_PROG_TYPE_SK_MSG`
    public static let skMsg = ProgramType(BPF_PROG_TYPE_SK_MSG)
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`
    public static let rawTracepoint = ProgramType(BPF_PROG_TYPE_RAW_TRACEPOINT)
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (`connect4`, `sendmsg6`, `getpeername4`, ...)
    public static let cgroupSockAddr = ProgramType(BPF_PROG_TYPE_CGROUP_SOCK_ADDR)
    /// `BPF_PROG_TYPE_CGROUP_SOCKOPT` (`getsockopt`, `setsockopt`)
    public static let cgroupSockopt = ProgramType(BPF_PROG_TYPE_CGROUP_SOCKOPT)
    /// `BPF_PROG_TYPE_TRACING` (`tp_btf`, fentry, fexit)
    public static let tracing = ProgramType(BPF_PROG_TYPE_TRACING)
    /// `BPF_PROG_TYPE_SK_LOOKUP`
    public static let skLookup = ProgramType(BPF_PROG_TYPE_SK_LOOKUP)
    /// `BPF_PROG_TYPE_SYSCALL`
    public static let syscall = ProgramType(BPF_PROG_TYPE_SYSCALL)

    /// The kernel's name for the type, such as `sock_ops`.
    public var description: String {
        libbpf_bpf_prog_type_str(bpf_prog_type(rawValue)).map { String(cString: $0) } ?? "prog_type \(rawValue)"
    }
}

/// Where and how a program attaches (`enum bpf_attach_type`).
public struct AttachType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The kernel's `bpf_attach_type` value.
    public let rawValue: UInt32
    /// Wraps a kernel `bpf_attach_type` value.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ type: bpf_attach_type) { self.rawValue = type.rawValue }
    var kernelValue: bpf_attach_type { bpf_attach_type(rawValue) }

    /// `BPF_CGROUP_INET_INGRESS` (`cgroup_skb/ingress`)
    public static let cgroupInetIngress = AttachType(BPF_CGROUP_INET_INGRESS)
    /// `BPF_CGROUP_INET_EGRESS` (`cgroup_skb/egress`)
    public static let cgroupInetEgress = AttachType(BPF_CGROUP_INET_EGRESS)
    /// `BPF_CGROUP_INET_SOCK_CREATE` (`cgroup/sock_create`)
    public static let cgroupSockCreate = AttachType(BPF_CGROUP_INET_SOCK_CREATE)
    /// `BPF_CGROUP_INET_SOCK_RELEASE` (`cgroup/sock_release`)
    public static let cgroupSockRelease = AttachType(BPF_CGROUP_INET_SOCK_RELEASE)
    /// `BPF_CGROUP_SOCK_OPS` (`sockops`)
    public static let cgroupSockOps = AttachType(BPF_CGROUP_SOCK_OPS)
    /// `BPF_CGROUP_INET4_CONNECT` (`cgroup/connect4`)
    public static let cgroupConnect4 = AttachType(BPF_CGROUP_INET4_CONNECT)
    /// `BPF_CGROUP_INET6_CONNECT` (`cgroup/connect6`)
    public static let cgroupConnect6 = AttachType(BPF_CGROUP_INET6_CONNECT)
    /// `BPF_CGROUP_UDP4_SENDMSG` (`cgroup/sendmsg4`)
    public static let cgroupSendmsg4 = AttachType(BPF_CGROUP_UDP4_SENDMSG)
    /// `BPF_CGROUP_UDP6_SENDMSG` (`cgroup/sendmsg6`)
    public static let cgroupSendmsg6 = AttachType(BPF_CGROUP_UDP6_SENDMSG)
    /// `BPF_CGROUP_UDP4_RECVMSG` (`cgroup/recvmsg4`)
    public static let cgroupRecvmsg4 = AttachType(BPF_CGROUP_UDP4_RECVMSG)
    /// `BPF_CGROUP_UDP6_RECVMSG` (`cgroup/recvmsg6`)
    public static let cgroupRecvmsg6 = AttachType(BPF_CGROUP_UDP6_RECVMSG)
    /// `BPF_CGROUP_INET4_GETPEERNAME` (`cgroup/getpeername4`)
    public static let cgroupGetpeername4 = AttachType(BPF_CGROUP_INET4_GETPEERNAME)
    /// `BPF_CGROUP_INET6_GETPEERNAME` (`cgroup/getpeername6`)
    public static let cgroupGetpeername6 = AttachType(BPF_CGROUP_INET6_GETPEERNAME)
    /// `BPF_CGROUP_GETSOCKOPT` (`cgroup/getsockopt`)
    public static let cgroupGetsockopt = AttachType(BPF_CGROUP_GETSOCKOPT)
    /// `BPF_CGROUP_SETSOCKOPT` (`cgroup/setsockopt`)
    public static let cgroupSetsockopt = AttachType(BPF_CGROUP_SETSOCKOPT)
    /// `BPF_SK_MSG_VERDICT` (`sk_msg`)
    public static let skMsgVerdict = AttachType(BPF_SK_MSG_VERDICT)
    /// `BPF_SK_SKB_STREAM_PARSER` (`sk_skb/stream_parser`)
    public static let skSKBStreamParser = AttachType(BPF_SK_SKB_STREAM_PARSER)
    /// `BPF_SK_SKB_STREAM_VERDICT` (`sk_skb/stream_verdict`)
    public static let skSKBStreamVerdict = AttachType(BPF_SK_SKB_STREAM_VERDICT)
    /// `BPF_SK_SKB_VERDICT` (`sk_skb/verdict`)
    public static let skSKBVerdict = AttachType(BPF_SK_SKB_VERDICT)
    /// `BPF_TRACE_RAW_TP` (`tp_btf`)
    public static let traceRawTracepoint = AttachType(BPF_TRACE_RAW_TP)

    /// The kernel's name for the attach type, such as `cgroup_inet4_connect`.
    public var description: String {
        libbpf_bpf_attach_type_str(kernelValue).map { String(cString: $0) } ?? "attach_type \(rawValue)"
    }

    /// Whether programs of this attach type attach to a cgroup.
    var attachesToCgroup: Bool {
        switch self {
        case .cgroupInetIngress, .cgroupInetEgress, .cgroupSockCreate, .cgroupSockRelease, .cgroupSockOps,
             .cgroupConnect4, .cgroupConnect6, .cgroupSendmsg4, .cgroupSendmsg6,
             .cgroupRecvmsg4, .cgroupRecvmsg6, .cgroupGetpeername4, .cgroupGetpeername6,
             .cgroupGetsockopt, .cgroupSetsockopt:
            return true
        default:
            return AttachType(BPF_CGROUP_INET4_BIND).rawValue...AttachType(BPF_CGROUP_INET6_POST_BIND).rawValue ~= rawValue
                || self == AttachType(BPF_CGROUP_DEVICE) || self == AttachType(BPF_CGROUP_SYSCTL)
        }
    }

    /// Whether programs of this attach type attach to a sockmap or sockhash.
    var attachesToSockMap: Bool {
        self == .skMsgVerdict || self == .skSKBStreamParser || self == .skSKBStreamVerdict || self == .skSKBVerdict
    }
}
