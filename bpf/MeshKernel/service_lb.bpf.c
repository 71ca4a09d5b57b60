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

/* Reverse translations of connected sockets (TCP, connected UDP), one per
 * open socket — a second connect() replaces it — freed when the socket is
 * released, whatever became of its destination.
 *
 * Kept in a table of slots indexed by the low bits of the socket cookie,
 * two candidate slots per socket (that index and its neighbour): the kernel
 * inlines an array lookup, a socket claims a free slot with one
 * compare-and-swap of its cookie (0 is free; the kernel never hands out
 * cookie 0) and writes its translation there without a lock; no other
 * socket reads or writes the translation of a slot it does not hold (the
 * slot's spill count is shared, and changed atomically). Only a socket whose
 * two slots other open sockets hold pays for a hash insert: it spills into
 * `spilled_translations`, and its first slot counts it, so that a lookup or
 * a release at an index nobody spilled from never touches the hash. (A
 * preallocated hash for every socket cost ≈ 250 ns per connect() here:
 * bucket lock with interrupts masked and the free list.) */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, struct connection_slot);
} connection_slots SEC(".maps");

/* The slot table's size less one, a power of two less one: set before load. */
const volatile __u64 connection_slot_mask = 65535;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct connection_translation);
} spilled_translations SEC(".maps");

/* Reverse translations of unconnected UDP sendmsg(): a socket may send to
 * many services and has no single peer to free at close, so the least
 * recently used entries make room. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct reverse_key);
    __type(value, struct frontend);
} datagram_translations SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LB_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} lb_counters SEC(".maps");

/* The slot a cookie's low bits name. */
static __always_inline struct connection_slot *slot_of(__u64 cookie) {
    __u32 index = (__u32)(cookie & connection_slot_mask);
    return bpf_map_lookup_elem(&connection_slots, &index);
}

/* A socket's two candidate slots: the one its cookie's low bits name, and
 * that one's neighbour (the same with a one-slot table). */
struct candidate_slots {
    struct connection_slot *first;
    struct connection_slot *second;
    /* The one of the two the socket holds, if any. */
    struct connection_slot *held;
};

/* Finds a socket's two candidate slots and the one it holds: 0 if the
 * table lookup failed (it cannot for an index under the mask, but the
 * verifier must see the check). */
static __always_inline int candidate_slots_of(__u64 cookie, struct candidate_slots *slots) {
    slots->first = slot_of(cookie);
    slots->second = slot_of(cookie ^ 1);
    if (!slots->first || !slots->second) return 0;
    slots->held = slots->first->cookie == cookie ? slots->first : slots->second->cookie == cookie ? slots->second : 0;
    return 1;
}

/* Frees the socket's spilled entry, if its first candidate slot counts any spill: 1 when one was freed. */
static __always_inline int free_spilled(struct connection_slot *first, __u64 cookie) {
    if (!first->spilled || bpf_map_delete_elem(&spilled_translations, &cookie) != 0) return 0;
    __sync_fetch_and_sub(&first->spilled, 1);
    return 1;
}

/* Takes a free slot for `cookie`: 1 when it is now the socket's. */
static __always_inline int claim(struct connection_slot *slot, __u64 cookie) {
    return slot->cookie == 0 && __sync_val_compare_and_swap(&slot->cookie, 0, cookie) == 0;
}

/* Records a connected socket's translation: in the candidate slot it
 * already holds, else in the first free one, else in the spill hash
 * (counted in its first candidate slot, at the socket's first spill).
 * Two candidates make a spill rare: both must be held by open sockets.
 * 0 when recorded. */
static __always_inline long remember_connection(__u64 cookie, const struct connection_translation *translation) {
    struct candidate_slots slots;
    if (!candidate_slots_of(cookie, &slots)) return -1;
    struct connection_slot *first = slots.first;
    struct connection_slot *chosen = slots.held;
    if (!chosen && claim(first, cookie)) chosen = first;
    if (!chosen && claim(slots.second, cookie)) chosen = slots.second;
    if (chosen) {
        __builtin_memcpy(&chosen->translation, translation, sizeof(*translation));
        /* An entry spilled by an earlier connect() of this socket is of no more use: free its room. */
        free_spilled(first, cookie);
        return 0;
    }
    /* Counted before the insert: a release must not skip the hash while the entry exists. */
    __sync_fetch_and_add(&first->spilled, 1);
    if (bpf_map_update_elem(&spilled_translations, &cookie, translation, BPF_NOEXIST) == 0) {
        MESH_COUNT(lb_counters, LB_REVERSE_SPILLED, 1);
        return 0;
    }
    __sync_fetch_and_sub(&first->spilled, 1);
    /* Already spilled by an earlier connect() of this socket (counted then), or the hash is full. */
    return bpf_map_update_elem(&spilled_translations, &cookie, translation, BPF_EXIST);
}

/* Copies a connected socket's translation into `found`; 0 when it has none. */
static __always_inline int recall_connection(__u64 cookie, struct connection_translation *found) {
    struct candidate_slots slots;
    if (!candidate_slots_of(cookie, &slots)) return 0;
    struct connection_translation *held = slots.held ? &slots.held->translation : 0;
    if (!held && slots.first->spilled) held = bpf_map_lookup_elem(&spilled_translations, &cookie);
    if (!held) return 0;
    __builtin_memcpy(found, held, sizeof(*found));
    return 1;
}

/* Frees a released socket's translation: the slot it holds or its spilled
 * entry (a socket that takes a slot frees its spilled entry then). 1 when
 * something was freed. */
static __always_inline int forget_connection(__u64 cookie) {
    struct candidate_slots slots;
    if (!candidate_slots_of(cookie, &slots)) return 0;
    if (slots.held) {
        slots.held->cookie = 0;
        return 1;
    }
    return free_spilled(slots.first, cookie);
}

/* Returns 1 when the destination was rewritten, 0 when it is not a service,
 * -1 when the service has no backend. `is6`: an IPv6 socket (native or with
 * a mapped address, which finds the IPv4 service); `connected`: connect()
 * (the way back kept by socket) rather than an unconnected sendmsg(). */
static __always_inline int balance(struct bpf_sock_addr *ctx, int is6, int connected) {
    struct service_key key = {.port = (__u16)ctx->user_port, .protocol = (__u8)ctx->protocol, .reserved = 0};
    mesh_read_address(ctx, is6, key.address);
    struct backend *backend = 0;
    __u64 cookie = 0;   /* read once, when a service is found (a consistent pick uses it too) */
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
        if (!cookie) cookie = bpf_get_socket_cookie(ctx);
        if (service->flags & SERVICE_CONSISTENT) {
            pick = (__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32);
        } else {
            pick = bpf_get_prandom_u32();
        }
        struct slot_key slot = {.service_id = service->id, .slot = service->first_slot + pick % service->slot_count};
        backend = bpf_map_lookup_elem(&slots, &slot);
        if (!backend) MESH_COUNT(lb_counters, LB_SLOT_MISSING, 1);
    }
    if (!backend) return -1;
    struct backend chosen;
    __builtin_memcpy(&chosen, backend, sizeof(chosen));
    long recorded;
    if (connected) {
        struct connection_translation translation = {.backend = chosen, .frontend = {.port = key.port, .reserved = 0}};
        __builtin_memcpy(translation.frontend.address, key.address, sizeof(key.address));
        recorded = remember_connection(cookie, &translation);
    } else {
        struct reverse_key reverse = {.cookie = cookie, .backend_port = chosen.port, .reserved = 0, .reserved2 = 0};
        __builtin_memcpy(reverse.backend_address, chosen.address, sizeof(chosen.address));
        struct frontend frontend = {.port = key.port, .reserved = 0};
        __builtin_memcpy(frontend.address, key.address, sizeof(key.address));
        recorded = bpf_map_update_elem(&datagram_translations, &reverse, &frontend, BPF_ANY);
    }
    if (recorded != 0) MESH_COUNT(lb_counters, LB_REVERSE_FAILED, 1);
    mesh_write_address(ctx, is6, chosen.address);
    ctx->user_port = chosen.port;
    return 1;
}

static __always_inline int refuse(void) {
    MESH_COUNT(lb_counters, LB_NO_BACKEND, 1);
    bpf_set_retval(-ECONNREFUSED);
    return 0;
}

static __always_inline int balance_connect(struct bpf_sock_addr *ctx, int is6) {
    int result = balance(ctx, is6, 1);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_CONNECTS_BALANCED, 1);
    return 1;
}

static __always_inline int balance_sendmsg(struct bpf_sock_addr *ctx, int is6) {
    int result = balance(ctx, is6, 0);
    if (result < 0) return refuse();
    if (result > 0) MESH_COUNT(lb_counters, LB_DATAGRAMS_BALANCED, 1);
    return 1;
}

/* `datagram`: recvmsg(), which may answer a sendmsg() (datagram table) or
 * a connected UDP socket (connection table); getpeername() is connected. */
static __always_inline void translate_back(struct bpf_sock_addr *ctx, int is6, int datagram) {
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct reverse_key reverse = {.cookie = cookie, .backend_port = (__u16)ctx->user_port, .reserved = 0, .reserved2 = 0};
    mesh_read_address(ctx, is6, reverse.backend_address);
    struct frontend shown;
    struct frontend *found = datagram ? bpf_map_lookup_elem(&datagram_translations, &reverse) : 0;
    if (found) {
        __builtin_memcpy(&shown, found, sizeof(shown));
    } else {
        /* A connected socket: its one translation, if the peer is the backend it was balanced to. */
        struct connection_translation copy;
        if (!recall_connection(cookie, &copy)) return;
        if (copy.backend.port != reverse.backend_port || __builtin_memcmp(copy.backend.address, reverse.backend_address, 16) != 0) return;
        shown = copy.frontend;
    }
    mesh_write_address(ctx, is6, shown.address);
    ctx->user_port = shown.port;
    MESH_COUNT(lb_counters, LB_REVERSE_TRANSLATED, 1);
}

SEC("cgroup/connect4")
int balance_connect4(struct bpf_sock_addr *ctx) { return balance_connect(ctx, 0); }

SEC("cgroup/sendmsg4")
int balance_sendmsg4(struct bpf_sock_addr *ctx) { return balance_sendmsg(ctx, 0); }

SEC("cgroup/recvmsg4")
int translate_recvmsg4(struct bpf_sock_addr *ctx) { translate_back(ctx, 0, 1); return 1; }

SEC("cgroup/getpeername4")
int translate_getpeername4(struct bpf_sock_addr *ctx) { translate_back(ctx, 0, 0); return 1; }

/* IPv6 sockets: native IPv6 services, and IPv4 services through mapped
 * addresses — the same table, since IPv4 is kept in mapped form. */
SEC("cgroup/connect6")
int balance_connect6(struct bpf_sock_addr *ctx) { return balance_connect(ctx, 1); }

SEC("cgroup/sendmsg6")
int balance_sendmsg6(struct bpf_sock_addr *ctx) { return balance_sendmsg(ctx, 1); }

SEC("cgroup/recvmsg6")
int translate_recvmsg6(struct bpf_sock_addr *ctx) { translate_back(ctx, 1, 1); return 1; }

SEC("cgroup/getpeername6")
int translate_getpeername6(struct bpf_sock_addr *ctx) { translate_back(ctx, 1, 0); return 1; }

/* A socket is released: free its translation, by cookie — whatever became
 * of its destination (a refused connect clears it, a second connect moves it). */
SEC("cgroup/sock_release")
int release_translation(struct bpf_sock *sk) {
    __u64 cookie = bpf_get_socket_cookie(sk);
    if (forget_connection(cookie)) MESH_COUNT(lb_counters, LB_REVERSE_RELEASED, 1);
    return 1;
}
