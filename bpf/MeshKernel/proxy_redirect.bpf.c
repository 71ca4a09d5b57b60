// Socket-level redirect to the per-node proxy, as Merbridge does it: a
// workload's connect() to a redirected destination is rewritten to its
// tenant's proxy listener; the original destination is recorded by socket
// cookie at connect and by 4-tuple once established, and the proxy gets it
// back from getsockopt(SOL_IP, SO_ORIGINAL_DST), answered here, so
// unmodified proxies (HAProxy with `server 0.0.0.0:0`) work. The proxy's own
// connections are never redirected.
#include "mesh_common.h"
#include "proxy_redirect.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum redirect_counter);
BPF2SWIFT_EXPORT(enum workload_flags);

#define SOL_IP 0
#define SO_ORIGINAL_DST 80
#define IPPROTO_TCP 6

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);              /* cgroup id */
    __type(value, struct workload);
} workloads SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 4096);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct redirect_key);
    __type(value, struct redirect_target);
} redirect_rules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);              /* socket cookie */
    __type(value, struct endpoint4);
} destinations_by_cookie SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct proxied_connection);
    __type(value, struct endpoint4);
} original_destinations SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, REDIRECT_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} redirect_counters SEC(".maps");

/* `is6`: an IPv6 socket with a mapped destination, rewritten in its last word. */
static __always_inline int redirect(struct bpf_sock_addr *ctx, int is6) {
    if (ctx->protocol != IPPROTO_TCP) return 1;
    __u64 cgroup = bpf_get_current_cgroup_id();
    struct workload *workload = bpf_map_lookup_elem(&workloads, &cgroup);
    if (!workload) return 1;
    if (workload->flags & WORKLOAD_IS_PROXY) {
        MESH_COUNT(redirect_counters, REDIRECT_PROXY_BYPASSED, 1);
        return 1;
    }
    __u32 address = is6 ? ctx->user_ip6[3] : ctx->user_ip4;
    struct redirect_key key = {.prefixlen = 64, .tenant = workload->tenant, .address = address};
    struct redirect_target *target = bpf_map_lookup_elem(&redirect_rules, &key);
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (!target || (target->match_port && target->match_port != port)) {
        MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_PASSED, 1);
        return 1;
    }
    struct endpoint4 original = {.address = address, .port = (__u16)ctx->user_port};
    __u64 cookie = bpf_get_socket_cookie(ctx);
    if (bpf_map_update_elem(&destinations_by_cookie, &cookie, &original, BPF_ANY) != 0)
        MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
    if (is6) ctx->user_ip6[3] = target->proxy_address; else ctx->user_ip4 = target->proxy_address;
    ctx->user_port = target->proxy_port;
    MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_REDIRECTED, 1);
    return 1;
}

SEC("cgroup/connect4")
int redirect_connect4(struct bpf_sock_addr *ctx) { return redirect(ctx, 0); }

/* Dual-stack applications reach IPv4 destinations from IPv6 sockets. */
SEC("cgroup/connect6")
int redirect_connect6(struct bpf_sock_addr *ctx) { return MESH_IS_V4_MAPPED(ctx->user_ip6) ? redirect(ctx, 1) : 1; }

static __always_inline struct proxied_connection connection_of(struct bpf_sock_ops *ops) {
    /* An IPv6 socket on IPv4-mapped addresses carries them in the last word.
     * Load every field at its constant offset and only then choose: clang
     * would otherwise turn the choice into a computed context offset, which
     * the verifier refuses. */
    int is6 = ops->family == AF_INET6;
    __u32 local4 = ops->local_ip4, local6 = ops->local_ip6[3];
    __u32 remote4 = ops->remote_ip4, remote6 = ops->remote_ip6[3];
    asm volatile("" : "+r"(local4), "+r"(local6), "+r"(remote4), "+r"(remote6));
    struct proxied_connection connection = {
        .client_address = is6 ? local6 : local4,
        .proxy_address = is6 ? remote6 : remote4,
        .client_port = (__u16)ops->local_port,
        .proxy_port = (__u16)bpf_ntohl(ops->remote_port),
    };
    return connection;
}

static __always_inline int on_ipv4(struct bpf_sock_ops *ops) {
    if (ops->family == AF_INET) return 1;
    return ops->family == AF_INET6 && MESH_IS_V4_MAPPED(ops->local_ip6) && MESH_IS_V4_MAPPED(ops->remote_ip6);
}

SEC("sockops")
int record_original_destination(struct bpf_sock_ops *ops) {
    if (!on_ipv4(ops)) return 1;
    if (ops->op == BPF_SOCK_OPS_STATE_CB) {
        /* The redirected connection closed: forget it, so a later connection
         * reusing the 4-tuple never inherits its original destination. */
        if (ops->args[1] == BPF_TCP_CLOSE) {
            struct proxied_connection connection = connection_of(ops);
            bpf_map_delete_elem(&original_destinations, &connection);
        }
        return 1;
    }
    if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) return 1;
    __u64 cookie = bpf_get_socket_cookie(ops);
    struct endpoint4 *original = bpf_map_lookup_elem(&destinations_by_cookie, &cookie);
    if (!original) return 1;
    struct proxied_connection connection = connection_of(ops);
    struct endpoint4 copy = *original;
    if (bpf_map_update_elem(&original_destinations, &connection, &copy, BPF_ANY) == 0) {
        MESH_COUNT(redirect_counters, REDIRECT_RECORDED, 1);
        bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    }
    else
        MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
    bpf_map_delete_elem(&destinations_by_cookie, &cookie);
    return 1;
}

SEC("cgroup/getsockopt")
int answer_original_destination(struct bpf_sockopt *ctx) {
    if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST) return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->family != AF_INET) return 1;
    struct proxied_connection connection = {
        .client_address = sk->dst_ip4,
        .proxy_address = sk->src_ip4,
        .client_port = bpf_ntohs((__u16)sk->dst_port),
        .proxy_port = (__u16)sk->src_port,
    };
    struct endpoint4 *original = bpf_map_lookup_elem(&original_destinations, &connection);
    if (!original) {
        MESH_COUNT(redirect_counters, REDIRECT_ORIGINAL_DST_MISSED, 1);
        return 1;
    }
    __u8 *optval = ctx->optval;
    if (optval + 16 > (__u8 *)ctx->optval_end) return 1;
    /* struct sockaddr_in: family, port, address, 8 bytes of zero. */
    __builtin_memset(optval, 0, 16);
    *(__u16 *)optval = AF_INET;
    *(__u16 *)(optval + 2) = original->port;
    *(__u32 *)(optval + 4) = original->address;
    /* Separate 32-bit stores: clang would merge them into one 64-bit store,
     * which the verifier refuses for the sockopt context. */
    *(volatile __s32 *)&ctx->optlen = 16;
    *(volatile __s32 *)&ctx->retval = 0;
    MESH_COUNT(redirect_counters, REDIRECT_ORIGINAL_DST_ANSWERED, 1);
    return 1;
}
