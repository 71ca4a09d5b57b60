// Socket-level service load balancing, as Cilium's bpf_sock does it:
// connect() (TCP, connected UDP) and sendmsg() (unconnected UDP) to a
// service address are rewritten to a backend chosen from the service's slot
// table — at random, or by socket cookie in a Maglev table — and
// getpeername()/recvmsg() translate back so the application only ever sees
// the service address. A service without backends refuses with ECONNREFUSED.
#include "mesh_common.h"
#include "service_lb.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum lb_counter);
BPF2SWIFT_EXPORT(enum service_flags);

#define ECONNREFUSED 111

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct service_key);
    __type(value, struct service);
} services SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 262144);
    __type(key, struct slot_key);
    __type(value, struct backend);
} slots SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct reverse_key);
    __type(value, struct frontend);
} reverse_translations SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LB_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} lb_counters SEC(".maps");

/* The IPv4 destination: user_ip4, or the last word of a mapped IPv6 one. */
static __always_inline __u32 destination(struct bpf_sock_addr *ctx, int is6) {
    return is6 ? ctx->user_ip6[3] : ctx->user_ip4;
}

static __always_inline void set_destination(struct bpf_sock_addr *ctx, int is6, __u32 address) {
    if (is6) ctx->user_ip6[3] = address; else ctx->user_ip4 = address;
}

/* Returns 1 when the destination was rewritten, 0 when it is not a service,
 * -1 when the service has no backend. `is6`: an IPv6 socket with a mapped address. */
static __always_inline int balance(struct bpf_sock_addr *ctx, int is6) {
    struct service_key key = {.address = destination(ctx, is6), .port = (__u16)ctx->user_port, .protocol = (__u8)ctx->protocol};
    struct backend *backend = 0;
    for (int attempt = 0; attempt < 2 && !backend; attempt++) {
        struct service *entry = bpf_map_lookup_elem(&services, &key);
        if (!entry) return 0;
        /* One copy: the element may be replaced (and its memory reused) while we run. */
        struct service current;
        __builtin_memcpy(&current, entry, sizeof(current));
        asm volatile("" ::: "memory");   /* keep the copy: never re-read the element */
        struct service *service = &current;
        if (service->slot_count == 0) return -1;
        __u32 pick;
        if (service->flags & SERVICE_CONSISTENT) {
            __u64 cookie = bpf_get_socket_cookie(ctx);
            pick = (__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32);
        } else {
            pick = bpf_get_prandom_u32();
        }
        struct slot_key slot = {.service_id = service->id, .slot = service->first_slot + pick % service->slot_count};
        backend = bpf_map_lookup_elem(&slots, &slot);
        if (!backend) MESH_COUNT(lb_counters, LB_SLOT_MISSING, 1);
    }
    if (!backend) return -1;
    struct reverse_key reverse = {
        .cookie = bpf_get_socket_cookie(ctx), .backend_address = backend->address, .backend_port = backend->port,
    };
    struct frontend frontend = {.address = destination(ctx, is6), .port = (__u16)ctx->user_port};
    if (bpf_map_update_elem(&reverse_translations, &reverse, &frontend, BPF_ANY) != 0)
        MESH_COUNT(lb_counters, LB_REVERSE_FAILED, 1);
    set_destination(ctx, is6, backend->address);
    ctx->user_port = backend->port;
    return 1;
}

static __always_inline int refuse(void) {
    MESH_COUNT(lb_counters, LB_NO_BACKEND, 1);
    bpf_set_retval(-ECONNREFUSED);
    return 0;
}

SEC("cgroup/connect4")
int balance_connect4(struct bpf_sock_addr *ctx) {
    int result = balance(ctx, 0);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_CONNECTS_BALANCED, 1);
    return 1;
}

SEC("cgroup/sendmsg4")
int balance_sendmsg4(struct bpf_sock_addr *ctx) {
    int result = balance(ctx, 0);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_DATAGRAMS_BALANCED, 1);
    return 1;
}

static __always_inline void translate_back(struct bpf_sock_addr *ctx, int is6) {
    struct reverse_key reverse = {
        .cookie = bpf_get_socket_cookie(ctx), .backend_address = destination(ctx, is6), .backend_port = (__u16)ctx->user_port,
    };
    struct frontend *frontend = bpf_map_lookup_elem(&reverse_translations, &reverse);
    if (!frontend) return;
    set_destination(ctx, is6, frontend->address);
    ctx->user_port = frontend->port;
    MESH_COUNT(lb_counters, LB_REVERSE_TRANSLATED, 1);
}

SEC("cgroup/recvmsg4")
int translate_recvmsg4(struct bpf_sock_addr *ctx) {
    translate_back(ctx, 0);
    return 1;
}

SEC("cgroup/getpeername4")
int translate_getpeername4(struct bpf_sock_addr *ctx) {
    translate_back(ctx, 0);
    return 1;
}

/* IPv6 sockets reaching IPv4 services through mapped addresses: the same
 * balancing and reverse translation, on the address's last word. */
SEC("cgroup/connect6")
int balance_connect6(struct bpf_sock_addr *ctx) {
    if (!MESH_IS_V4_MAPPED(ctx->user_ip6)) return 1;
    int result = balance(ctx, 1);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_CONNECTS_BALANCED, 1);
    return 1;
}

SEC("cgroup/sendmsg6")
int balance_sendmsg6(struct bpf_sock_addr *ctx) {
    if (!MESH_IS_V4_MAPPED(ctx->user_ip6)) return 1;
    int result = balance(ctx, 1);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_DATAGRAMS_BALANCED, 1);
    return 1;
}

SEC("cgroup/recvmsg6")
int translate_recvmsg6(struct bpf_sock_addr *ctx) {
    if (MESH_IS_V4_MAPPED(ctx->user_ip6)) translate_back(ctx, 1);
    return 1;
}

SEC("cgroup/getpeername6")
int translate_getpeername6(struct bpf_sock_addr *ctx) {
    if (MESH_IS_V4_MAPPED(ctx->user_ip6)) translate_back(ctx, 1);
    return 1;
}
