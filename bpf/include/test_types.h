/* Types shared by the test programs in bpf/MeshKernelTests and the tests'
 * Swift mirrors (Tests/MeshKernelTests/Support/TestTypes.swift). */
#ifndef TEST_TYPES_H
#define TEST_TYPES_H

#include <linux/types.h>

struct flow_key {
    __u32 address;
    __u16 port;
    __u8 protocol;
    __u8 pad;
};

struct flow_stats {
    __u64 packets;
    __u64 bytes;
    __u32 last_seen;
    __u32 flags;
};

/* One ring buffer record from `produce_events`. */
struct test_event {
    __u64 sequence;
    __u64 value;
    __u32 cpu;
    __u32 kind;
};

/* BPF_PROG_TEST_RUN context of `produce_events` and `bump_counters`. */
struct produce_args {
    __u32 count;
    __u32 kind;
    __u64 first_sequence;
};

/* Slots of `hits`: which attach point fired. */
enum attach_point {
    HIT_SOCK_OPS, HIT_CONNECT4, HIT_CONNECT6, HIT_SENDMSG4, HIT_SENDMSG6, HIT_RECVMSG4,
    HIT_RECVMSG6, HIT_GETPEERNAME4, HIT_GETPEERNAME6, HIT_GETSOCKOPT, HIT_SOCK_CREATE,
    HIT_SKB_INGRESS, HIT_SKB_EGRESS, HIT_SK_MSG, HIT_SK_SKB, HIT_RAW_TP, HIT_TP_BTF,
    HIT_TRACEPOINT, HIT_UPROBE, HIT_URETPROBE, HIT_KPROBE, HIT_KRETPROBE,
    HIT_COUNT = 32,
};

#endif
