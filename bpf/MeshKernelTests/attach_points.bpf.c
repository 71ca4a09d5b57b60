// One program per attach type the mesh uses; each counts its calls in `hits`
// so a test can see that it ran, and then that it stopped running.
#include "mesh_common.h"
#include "test_types.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum attach_point);

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, HIT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} sockets SEC(".maps");

/* The cgroup id of the last process that created a socket under `on_sock_create`. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} last_cgroup SEC(".maps");

SEC("sockops") int on_sock_ops(struct bpf_sock_ops *ctx) { MESH_COUNT(hits, HIT_SOCK_OPS, 1); return 1; }
SEC("cgroup/connect4") int on_connect4(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_CONNECT4, 1); return 1; }
SEC("cgroup/connect6") int on_connect6(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_CONNECT6, 1); return 1; }
SEC("cgroup/sendmsg4") int on_sendmsg4(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_SENDMSG4, 1); return 1; }
SEC("cgroup/sendmsg6") int on_sendmsg6(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_SENDMSG6, 1); return 1; }
SEC("cgroup/recvmsg4") int on_recvmsg4(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_RECVMSG4, 1); return 1; }
SEC("cgroup/recvmsg6") int on_recvmsg6(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_RECVMSG6, 1); return 1; }
SEC("cgroup/getpeername4") int on_getpeername4(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_GETPEERNAME4, 1); return 1; }
SEC("cgroup/getpeername6") int on_getpeername6(struct bpf_sock_addr *ctx) { MESH_COUNT(hits, HIT_GETPEERNAME6, 1); return 1; }
SEC("cgroup/getsockopt") int on_getsockopt(struct bpf_sockopt *ctx) { MESH_COUNT(hits, HIT_GETSOCKOPT, 1); return 1; }
SEC("cgroup/sock_create")
int on_sock_create(struct bpf_sock *ctx) {
    __u32 zero = 0;
    __u64 id = bpf_get_current_cgroup_id();
    bpf_map_update_elem(&last_cgroup, &zero, &id, BPF_ANY);
    MESH_COUNT(hits, HIT_SOCK_CREATE, 1);
    return 1;
}
SEC("cgroup_skb/ingress") int on_skb_ingress(struct __sk_buff *ctx) { MESH_COUNT(hits, HIT_SKB_INGRESS, 1); return 1; }
SEC("cgroup_skb/egress") int on_skb_egress(struct __sk_buff *ctx) { MESH_COUNT(hits, HIT_SKB_EGRESS, 1); return 1; }
SEC("sk_msg") int on_sk_msg(struct sk_msg_md *ctx) { MESH_COUNT(hits, HIT_SK_MSG, 1); return SK_PASS; }
SEC("sk_skb/stream_verdict") int on_sk_skb(struct __sk_buff *ctx) { MESH_COUNT(hits, HIT_SK_SKB, 1); return SK_PASS; }

SEC("raw_tp/sys_enter")
int on_raw_tp(void *ctx) {
    MESH_COUNT(hits, HIT_RAW_TP, 1);
    return 0;
}

SEC("tp_btf/sys_enter")
int on_tp_btf(void *ctx) {
    MESH_COUNT(hits, HIT_TP_BTF, 1);
    return 0;
}

SEC("tracepoint/raw_syscalls/sys_enter")
int on_tracepoint(void *ctx) {
    MESH_COUNT(hits, HIT_TRACEPOINT, 1);
    return 0;
}

SEC("uprobe")
int on_uprobe(void *ctx) {
    MESH_COUNT(hits, HIT_UPROBE, 1);
    return 0;
}

SEC("uretprobe")
int on_uretprobe(void *ctx) {
    MESH_COUNT(hits, HIT_URETPROBE, 1);
    return 0;
}

SEC("kprobe")
int on_kprobe(void *ctx) { MESH_COUNT(hits, HIT_KPROBE, 1); return 0; }

SEC("kretprobe")
int on_kretprobe(void *ctx) { MESH_COUNT(hits, HIT_KRETPROBE, 1); return 0; }
