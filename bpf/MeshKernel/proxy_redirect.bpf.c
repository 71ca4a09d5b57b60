// Socket-level redirect to the per-node proxy, as Merbridge does it: a
// workload's connect() to a redirected destination is rewritten to its
// tenant's proxy listener; the original destination is recorded by socket
// cookie at connect and by 4-tuple once established, and the proxy gets it
// back from getsockopt(SOL_IP, SO_ORIGINAL_DST), answered here, so
// unmodified proxies (HAProxy with `server 0.0.0.0:0`) work. With it the
// record keeps the workload's identity and tenant, for proxies that ask the
// datapath directly. The proxy's own connections are never redirected.
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
    __type(value, struct redirect_record);
} destinations_by_cookie SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct proxied_connection);
    __type(value, struct redirect_record);
} original_destinations SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, REDIRECT_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} redirect_counters SEC(".maps");

/* `is6`: an IPv6 socket (native, or a mapped IPv4 destination). */
static __always_inline int redirect(struct bpf_sock_addr *ctx, int is6) {
    if (ctx->protocol != IPPROTO_TCP) return 1;
    __u64 cgroup = bpf_get_current_cgroup_id();
    struct workload *workload = bpf_map_lookup_elem(&workloads, &cgroup);
    if (!workload) return 1;
    if (workload->flags & WORKLOAD_IS_PROXY) {
        MESH_COUNT(redirect_counters, REDIRECT_PROXY_BYPASSED, 1);
        return 1;
    }
    struct redirect_key key = {.prefixlen = 160, .tenant = workload->tenant};
    mesh_read_address(ctx, is6, key.address);
    struct redirect_target *found = bpf_map_lookup_elem(&redirect_rules, &key);
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (!found || (found->match_port && found->match_port != port)) {
        MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_PASSED, 1);
        return 1;
    }
    struct redirect_target target;
    __builtin_memcpy(&target, found, sizeof(target));
    /* A rule's proxy is of its network's family (Swift checks it), so a
     * destination of the other family is not the rule's: a broad IPv6 rule
     * such as ::/0 also covers the mapped form of IPv4 destinations, and an
     * IPv4 socket can only ever be sent to an IPv4 proxy. */
    if (MESH_IS_V4_MAPPED(key.address) != MESH_IS_V4_MAPPED(target.proxy_address)) {
        MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_PASSED, 1);
        return 1;
    }
    struct redirect_record record = {
        .original = {.port = (__u16)ctx->user_port, .reserved = 0},
        .source_identity = workload->identity,
        .source_tenant = workload->tenant,
    };
    __builtin_memcpy(record.original.address, key.address, sizeof(key.address));
    __u64 cookie = bpf_get_socket_cookie(ctx);
    if (bpf_map_update_elem(&destinations_by_cookie, &cookie, &record, BPF_ANY) != 0)
        MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
    mesh_write_address(ctx, is6, target.proxy_address);
    ctx->user_port = target.proxy_port;
    MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_REDIRECTED, 1);
    return 1;
}

SEC("cgroup/connect4")
int redirect_connect4(struct bpf_sock_addr *ctx) { return redirect(ctx, 0); }

SEC("cgroup/connect6")
int redirect_connect6(struct bpf_sock_addr *ctx) { return redirect(ctx, 1); }

/* Reads the 4-tuple of a TCP socket in mapped form. Every field is loaded
 * at its constant offset before choosing: clang would otherwise turn the
 * choice into a computed context offset, which the verifier refuses. */
#define MESH_READ_TUPLE(sk, family, local_ip4, remote_ip4, local_ip6, remote_ip6, local, remote)   \
    do {                                                                                          \
        __u32 __l4 = (sk)->local_ip4, __r4 = (sk)->remote_ip4;                                    \
        __u32 __l6[4] = {(sk)->local_ip6[0], (sk)->local_ip6[1], (sk)->local_ip6[2], (sk)->local_ip6[3]};     \
        __u32 __r6[4] = {(sk)->remote_ip6[0], (sk)->remote_ip6[1], (sk)->remote_ip6[2], (sk)->remote_ip6[3]}; \
        asm volatile("" : "+r"(__l4), "+r"(__r4));                                                \
        if ((family) == AF_INET) { MESH_MAP_V4(local, __l4); MESH_MAP_V4(remote, __r4); }         \
        else { __builtin_memcpy(local, __l6, 16); __builtin_memcpy(remote, __r6, 16); }           \
    } while (0)

static __always_inline struct proxied_connection connection_of(struct bpf_sock_ops *ops) {
    struct proxied_connection connection = {
        .client_port = (__u16)ops->local_port,
        .proxy_port = (__u16)bpf_ntohl(ops->remote_port),
    };
    MESH_READ_TUPLE(ops, ops->family, local_ip4, remote_ip4, local_ip6, remote_ip6,
                    connection.client_address, connection.proxy_address);
    return connection;
}

SEC("sockops")
int record_original_destination(struct bpf_sock_ops *ops) {
    __u32 op = ops->op;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        /* The redirected connection closed: forget it, so a later connection
         * reusing the 4-tuple never inherits its original destination. */
        if (ops->args[1] == BPF_TCP_CLOSE) {
            struct proxied_connection connection = connection_of(ops);
            bpf_map_delete_elem(&original_destinations, &connection);
        }
        return 1;
    }
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) return 1;
    __u64 cookie = bpf_get_socket_cookie(ops);
    struct redirect_record *record = bpf_map_lookup_elem(&destinations_by_cookie, &cookie);
    if (!record) return 1;
    struct proxied_connection connection = connection_of(ops);
    struct redirect_record copy;
    __builtin_memcpy(&copy, record, sizeof(copy));
    if (bpf_map_update_elem(&original_destinations, &connection, &copy, BPF_ANY) == 0) {
        MESH_COUNT(redirect_counters, REDIRECT_RECORDED, 1);
        bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    }
    else
        MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
    bpf_map_delete_elem(&destinations_by_cookie, &cookie);
    return 1;
}

#define SOL_IPV6 41
#define IP6T_SO_ORIGINAL_DST 80

/* Answers getsockopt(SOL_IP, SO_ORIGINAL_DST) with a sockaddr_in (IPv4
 * originals, on IPv4 sockets and dual-stack ones) and getsockopt(SOL_IPV6,
 * IP6T_SO_ORIGINAL_DST) with a sockaddr_in6, as netfilter's REDIRECT does. */
SEC("cgroup/getsockopt")
int answer_original_destination(struct bpf_sockopt *ctx) {
    int want6 = ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST;
    if (!want6 && (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)) return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk) return 1;
    __u32 family = sk->family;
    if (family != AF_INET && family != AF_INET6) return 1;
    struct proxied_connection connection = {
        .client_port = bpf_ntohs((__u16)sk->dst_port),
        .proxy_port = (__u16)sk->src_port,
    };
    MESH_READ_TUPLE(sk, family, src_ip4, dst_ip4, src_ip6, dst_ip6, connection.proxy_address, connection.client_address);
    struct redirect_record *found = bpf_map_lookup_elem(&original_destinations, &connection);
    if (!found) {
        MESH_COUNT(redirect_counters, REDIRECT_ORIGINAL_DST_MISSED, 1);
        return 1;
    }
    struct endpoint original;
    __builtin_memcpy(&original, &found->original, sizeof(original));
    __u8 *optval = ctx->optval;
    __s32 length;
    if (want6) {
        /* struct sockaddr_in6: family, port, flow info, address, scope id. */
        if (optval + 28 > (__u8 *)ctx->optval_end) goto missed;
        __builtin_memset(optval, 0, 28);
        *(__u16 *)optval = AF_INET6;
        *(__u16 *)(optval + 2) = original.port;
        __builtin_memcpy(optval + 8, original.address, 16);
        length = 28;
    } else {
        if (!MESH_IS_V4_MAPPED(original.address)) goto missed;   /* an IPv6 original asked for as IPv4 */
        /* struct sockaddr_in: family, port, address, 8 bytes of zero. */
        if (optval + 16 > (__u8 *)ctx->optval_end) goto missed;
        __builtin_memset(optval, 0, 16);
        *(__u16 *)optval = AF_INET;
        *(__u16 *)(optval + 2) = original.port;
        *(__u32 *)(optval + 4) = original.address[3];
        length = 16;
    }
    /* Separate 32-bit stores: clang would merge them into one 64-bit store,
     * which the verifier refuses for the sockopt context. */
    *(volatile __s32 *)&ctx->optlen = length;
    *(volatile __s32 *)&ctx->retval = 0;
    MESH_COUNT(redirect_counters, REDIRECT_ORIGINAL_DST_ANSWERED, 1);
    return 1;
missed:
    /* Known, but not answerable as asked (too small a buffer, the other family). */
    MESH_COUNT(redirect_counters, REDIRECT_ORIGINAL_DST_MISSED, 1);
    return 1;
}
