/* The socket-level redirect to the node proxy, shared by the programs that
 * send a workload's connect() there: ProxyRedirect's rules
 * (proxy_redirect.bpf.c) and the identity policy's redirect verdict
 * (identity_policy.bpf.c). Both objects declare these maps; the policy's
 * are ProxyRedirect's own (Swift reuses their descriptors before load), so
 * the proxy's side of the redirect finds every record in one table. */
#ifndef REDIRECT_CONNECT_H
#define REDIRECT_CONNECT_H

#include "mesh_common.h"
#include "proxy_redirect.h"

/* The workloads ProxyRedirect knows, by cgroup id: tenant, identity, and
 * whether it is the node proxy (never redirected). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);              /* cgroup id */
    __type(value, struct workload);
} workloads SEC(".maps");

/* A redirected socket's record, by its cookie, from connect() until its SYN
 * reaches the proxy; the LRU drops those of connections that never did. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);              /* socket cookie */
    __type(value, struct pending_redirect);
} pending_redirects SEC(".maps");

enum redirect_outcome {
    REDIRECT_SKIPPED = 0,       /* left alone: the proxy is of the other family, or already the destination */
    REDIRECT_DONE = 1,          /* sent to the proxy, record left for its side */
    REDIRECT_UNRECORDED = 2,    /* sent to the proxy, but the pending table had no room */
};

/* Whether `endpoint` is `address` (mapped form) and `port` (network order). */
static __always_inline int same_endpoint(const struct endpoint *endpoint, const __u32 address[4], __u16 port) {
    return endpoint->port == port && endpoint->address[0] == address[0] && endpoint->address[1] == address[1] &&
           endpoint->address[2] == address[2] && endpoint->address[3] == address[3];
}

/* Rewrites a connect() from `original` (mapped form, the context's current
 * destination) to `proxy`, leaving the record for the proxy's side by
 * socket cookie. A proxy is of one family, so a destination of the other is
 * not redirected: a broad IPv6 network such as ::/0 also covers the mapped
 * form of IPv4 destinations, and an IPv4 socket can only ever be sent to an
 * IPv4 proxy. Nor is a connect() that already goes to this proxy; one that
 * an earlier program sent to another proxy goes to this one, and keeps its
 * original destination. */
static __always_inline enum redirect_outcome redirect_connect(struct bpf_sock_addr *ctx, int is6, const __u32 original[4],
                                                              __u32 identity, __u32 tenant, const struct endpoint *proxy) {
    if (MESH_IS_V4_MAPPED(original) != MESH_IS_V4_MAPPED(proxy->address)) return REDIRECT_SKIPPED;
    __u16 port = (__u16)ctx->user_port;
    /* Already at this proxy (sent there by an earlier program, or connecting to it). */
    if (same_endpoint(proxy, original, port)) return REDIRECT_SKIPPED;
    __u64 cookie = bpf_get_socket_cookie(ctx);   /* made now, kept in the socket: the proxy's side reads it there */
    struct pending_redirect pending = {
        .record = {
            .original = {.port = port, .reserved = 0},
            .source_identity = identity,
            .source_tenant = tenant,
            .reserved = 0,
            .client_cookie = cookie,
        },
        .proxy = *proxy,
    };
    __builtin_memcpy(pending.record.original.address, original, sizeof(pending.record.original.address));
    /* Sent to another proxy by an earlier program of this connect() (ProxyRedirect's
     * rules, a policy's redirect verdict): this proxy takes the connection, and the
     * original destination stays the application's, from that program's record. */
    struct pending_redirect *earlier = bpf_map_lookup_elem(&pending_redirects, &cookie);
    if (earlier && same_endpoint(&earlier->proxy, original, port)) pending.record.original = earlier->record.original;
    long recorded = bpf_map_update_elem(&pending_redirects, &cookie, &pending, BPF_ANY);
    mesh_write_address(ctx, is6, proxy->address);
    ctx->user_port = proxy->port;
    return recorded == 0 ? REDIRECT_DONE : REDIRECT_UNRECORDED;
}

#endif
