// Socket acceleration: established TCP sockets of a cgroup go into a
// sockhash keyed by their 4-tuple; sk_msg then hands each sendmsg directly to
// the peer socket's receive queue when the peer is a local socket in the map,
// skipping the TCP/IP stack.
#include "mesh_common.h"
#include "sock_redirect.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum accel_counter);

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct sock_key);
    __type(value, __u64);
} sock_hash SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, ACCEL_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} accel_counters SEC(".maps");

static __always_inline void set_mapped_ipv4(__u8 *out, __u32 address_be) {
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &address_be, 4);
}

static __always_inline void set_ipv6(__u8 *out, const __u32 *words) {
    __u32 copy[4] = {words[0], words[1], words[2], words[3]};
    __builtin_memcpy(out, copy, 16);
}

SEC("sockops")
int accelerate_sockets(struct bpf_sock_ops *ops) {
    __u32 op = ops->op;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
        op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        /* args[1] is the new state; BPF_TCP_CLOSE: the sockhash drops the socket itself. */
        if (ops->args[1] == BPF_TCP_CLOSE) MESH_COUNT(accel_counters, ACCEL_SOCKETS_REMOVED, 1);
        return 1;
    }
    struct sock_key key = {};
    if (ops->family == AF_INET) {
        set_mapped_ipv4(key.local_ip, ops->local_ip4);
        set_mapped_ipv4(key.remote_ip, ops->remote_ip4);
    } else if (ops->family == AF_INET6) {
        set_ipv6(key.local_ip, ops->local_ip6);
        set_ipv6(key.remote_ip, ops->remote_ip6);
    } else {
        return 1;
    }
    key.local_port = ops->local_port;                   /* host byte order */
    key.remote_port = bpf_ntohl(ops->remote_port);      /* network order in the upper bytes */
    key.netns = bpf_get_netns_cookie(ops);
    /* BPF_NOEXIST: never evict another socket (another namespace's, say). */
    if (bpf_sock_hash_update(ops, &sock_hash, &key, BPF_NOEXIST) == 0) {
        MESH_COUNT(accel_counters, ACCEL_SOCKETS_ADDED, 1);
        bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    } else {
        MESH_COUNT(accel_counters, ACCEL_INSERT_FAILED, 1);
    }
    return 1;
}

SEC("sk_msg")
int redirect_to_peer(struct sk_msg_md *msg) {
    struct sock_key peer = {};
    /* The peer's key is ours with the ends swapped. */
    if (msg->family == AF_INET) {
        set_mapped_ipv4(peer.local_ip, msg->remote_ip4);
        set_mapped_ipv4(peer.remote_ip, msg->local_ip4);
    } else if (msg->family == AF_INET6) {
        set_ipv6(peer.local_ip, msg->remote_ip6);
        set_ipv6(peer.remote_ip, msg->local_ip6);
    } else {
        return SK_PASS;
    }
    peer.local_port = bpf_ntohl(msg->remote_port);
    peer.remote_port = msg->local_port;
    peer.netns = bpf_get_netns_cookie(msg);
    __u64 size = msg->size;
    if (bpf_msg_redirect_hash(msg, &sock_hash, &peer, BPF_F_INGRESS) == SK_PASS) {
        MESH_COUNT(accel_counters, ACCEL_MSGS_REDIRECTED, 1);
        MESH_COUNT(accel_counters, ACCEL_BYTES_REDIRECTED, size);
    } else {
        MESH_COUNT(accel_counters, ACCEL_MSGS_PASSED, 1);
    }
    return SK_PASS;
}
