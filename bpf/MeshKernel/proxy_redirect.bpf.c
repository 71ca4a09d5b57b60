// Socket-level redirect to the per-node proxy, as Merbridge does it: a
// workload's connect() to a redirected destination is rewritten to its
// tenant's proxy listener and the original destination is kept by socket
// cookie. Unlike Merbridge, no program runs on the workloads' other
// connections after connect(): the proxy's side learns the record from the
// connection's SYN (by 4-tuple, on the registered proxy's cgroup) and the
// proxy gets it back from getsockopt(SOL_IP, SO_ORIGINAL_DST), answered
// here, so unmodified proxies (HAProxy with `server 0.0.0.0:0`) work. The
// record keeps the workload's identity and tenant, for proxies that ask the
// datapath directly. The proxy's own connections are never redirected.
#include "mesh_common.h"
#include "proxy_redirect.h"
#include "redirect_connect.h"
#include "flow_start.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum redirect_counter);
BPF2SWIFT_EXPORT(enum workload_flags);

#define SOL_IP 0
#define SO_ORIGINAL_DST 80

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 4096);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct redirect_key);
    __type(value, struct redirect_target);
} redirect_rules SEC(".maps");

/* The kernel's socket, read by field name (CO-RE), for the cookie of a
 * socket found by 4-tuple: the helper that reads a cookie takes only the
 * program's own socket in cgroup_skb programs. */
typedef struct { long long counter; } atomic64_t;
struct sock_common {
    atomic64_t skc_cookie;
} __attribute__((preserve_access_index));
struct sock {
    struct sock_common __sk_common;
} __attribute__((preserve_access_index));

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
    struct endpoint proxy;
    __builtin_memcpy(&proxy, &found->proxy, sizeof(proxy));   /* one copy: a rule may be replaced meanwhile */
    enum redirect_outcome outcome = redirect_connect(ctx, is6, key.address, workload->identity, workload->tenant, &proxy);
    if (outcome == REDIRECT_SKIPPED) {
        MESH_COUNT(redirect_counters, REDIRECT_CONNECTS_PASSED, 1);
        return 1;
    }
    if (outcome == REDIRECT_UNRECORDED) MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
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

/* A proxy socket's connection, the client being its peer. */
static __always_inline struct proxied_connection connection_of(struct bpf_sock *sk, __u32 family) {
    struct proxied_connection connection = {
        .client_port = bpf_ntohs((__u16)sk->dst_port),
        .proxy_port = (__u16)sk->src_port,
    };
    MESH_READ_TUPLE(sk, family, src_ip4, dst_ip4, src_ip6, dst_ip6, connection.proxy_address, connection.client_address);
    return connection;
}

/* Learns a redirected connection's original destination on the proxy's
 * side: from the SYN arriving at a registered proxy's listener, the client
 * socket that sent it is found by its 4-tuple and its pending record moves
 * to the table the proxy asks (by the connection as its accepted socket
 * sees it). Workloads' connections that are not redirected pay nothing for
 * this. A SYN from a socket that was not redirected clears the table's
 * entry for its 4-tuple, so a connection never inherits the original
 * destination of an earlier one. */
static __always_inline void learn(struct __sk_buff *skb, const struct flow_start *syn) {
    struct proxied_connection connection = {.client_port = syn->source_port, .proxy_port = syn->destination_port};
    __builtin_memcpy(connection.client_address, syn->source, sizeof(connection.client_address));
    __builtin_memcpy(connection.proxy_address, syn->destination, sizeof(connection.proxy_address));
    /* Looked up as the client's socket sees the connection: local = the SYN's source. */
    struct bpf_sock_tuple tuple = {};
    __u32 size;
    if (syn->is6) {
        __builtin_memcpy(tuple.ipv6.saddr, syn->destination, 16);
        __builtin_memcpy(tuple.ipv6.daddr, syn->source, 16);
        tuple.ipv6.sport = bpf_htons(syn->destination_port);
        tuple.ipv6.dport = bpf_htons(syn->source_port);
        size = sizeof(tuple.ipv6);
    } else {
        tuple.ipv4.saddr = syn->destination[3];
        tuple.ipv4.daddr = syn->source[3];
        tuple.ipv4.sport = bpf_htons(syn->destination_port);
        tuple.ipv4.dport = bpf_htons(syn->source_port);
        size = sizeof(tuple.ipv4);
    }
    __u64 cookie = 0;
    struct bpf_sock *client = bpf_sk_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
    if (client) {
        struct sock *socket = (struct sock *)bpf_skc_to_tcp_sock(client);
        cookie = socket ? socket->__sk_common.skc_cookie.counter : 0;
        bpf_sk_release(client);
    }
    struct pending_redirect *found = cookie ? bpf_map_lookup_elem(&pending_redirects, &cookie) : 0;
    struct pending_redirect pending;
    if (found) __builtin_memcpy(&pending, found, sizeof(pending));
    /* Only to the listener its connect() was sent to. */
    if (found && same_endpoint(&pending.proxy, connection.proxy_address, bpf_htons(connection.proxy_port))) {
        if (bpf_map_update_elem(&original_destinations, &connection, &pending.record, BPF_ANY) == 0) {
            MESH_COUNT(redirect_counters, REDIRECT_RECORDED, 1);
            bpf_map_delete_elem(&pending_redirects, &cookie);
        } else {
            MESH_COUNT(redirect_counters, REDIRECT_RECORD_FAILED, 1);
        }
        return;
    }
    /* No pending record for this listener: a retransmitted SYN of a
     * connection already learned (same client socket) keeps its record; any
     * other leaves none behind. */
    struct redirect_record *existing = bpf_map_lookup_elem(&original_destinations, &connection);
    if (existing && (cookie == 0 || existing->client_cookie != cookie)) bpf_map_delete_elem(&original_destinations, &connection);
}

SEC("cgroup_skb/ingress")
int learn_original_destination(struct __sk_buff *skb) {
    struct flow_start syn;
    if (read_flow_start(skb, &syn) == FLOW_START && syn.protocol == IPPROTO_TCP) learn(skb, &syn);
    return 1;
}

/* The proxy's side of a connection as its accepted socket sees it (the client is the peer). */
static __always_inline struct proxied_connection accepted_connection(struct bpf_sock_ops *ops) {
    struct proxied_connection connection = {
        .client_port = (__u16)bpf_ntohl(ops->remote_port),
        .proxy_port = (__u16)ops->local_port,
    };
    MESH_READ_TUPLE(ops, ops->family, local_ip4, remote_ip4, local_ip6, remote_ip6,
                    connection.proxy_address, connection.client_address);
    return connection;
}

/* On a registered proxy's sockets: a redirected connection the proxy
 * accepted asks to hear of its state changes, and when it closes its record
 * goes, so the table holds live connections only. */
SEC("sockops")
int forget_original_destination(struct bpf_sock_ops *ops) {
    __u32 op = ops->op;
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        struct proxied_connection connection = accepted_connection(ops);
        if (bpf_map_lookup_elem(&original_destinations, &connection))
            bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    } else if (op == BPF_SOCK_OPS_STATE_CB && ops->args[1] == BPF_TCP_CLOSE) {
        struct proxied_connection connection = accepted_connection(ops);
        bpf_map_delete_elem(&original_destinations, &connection);
    }
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
    struct proxied_connection connection = connection_of(sk, family);
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
