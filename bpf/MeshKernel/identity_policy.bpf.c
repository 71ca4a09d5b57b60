// Identity-based L3/L4 policy: the identity of a workload comes from its
// cgroup, the peer's from its address (an LPM trie of known workload
// addresses; everything else is "world"), and the workload's policy set for
// the direction decides — first matching rule wins, else the default.
// Egress is enforced at connect()/sendmsg(): the application gets EPERM;
// a redirect rule sends a matching TCP connect() to the node proxy
// (redirect_connect.h, with ProxyRedirect's tables).
// Ingress is enforced by cgroup_skb on arriving TCP SYNs and UDP datagrams
// (IPv4 and IPv6): they are dropped, as network policy does. Every decision
// is counted per rule, and sent as a flow event once events are asked for.
#include "mesh_common.h"
#include "identity_policy.h"
#include "redirect_connect.h"
#include "flow_start.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum reserved_identity);
BPF2SWIFT_EXPORT(enum verdict);
BPF2SWIFT_EXPORT(enum policy_counter);
BPF2SWIFT_EXPORT(struct flow_event);
BPF2SWIFT_EXPORT(enum flow_direction);

#define NO_RULE 0xffff

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);          /* cgroup id */
    __type(value, __u32);        /* identity */
} workload_identities SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 16384);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct peer_key);
    __type(value, __u32);        /* identity */
} peer_identities SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);          /* identity */
    __type(value, struct policy_set);
} policies SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);          /* identity */
    __type(value, struct policy_set);
} ingress_policies SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);          /* rule id */
    __type(value, struct rule_counter);
} rule_counters SEC(".maps");

/* The proxy each redirect rule sends connections to, by rule id. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);          /* rule id */
    __type(value, struct endpoint);
} rule_proxies SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, POLICY_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} policy_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} flow_events SEC(".maps");

/* Set from Swift when flow events are first asked for: until then no
 * connect pays for a ring record nobody reads. */
volatile __u32 flow_events_wanted;

/* What the rules say of one flow. */
struct decision {
    __u8 verdict;
    __u32 rule_id;         /* NO_RULE: no rule matched (the default applied) */
    __u32 peer_identity;   /* 0: not looked up (no rule needed it) */
};

struct match_context {
    struct policy_set *set;
    __u32 address;
    __u16 port;
    __u8 protocol;
    __u8 has_address; /* 0: a native IPv6 peer, whose IPv4 `address` is none (no CIDR of a prefix matches it) */
    struct decision decision;   /* the matching rule's verdict and id, each read once (the set may be replaced meanwhile) */
};

static __always_inline __u32 identity_of_address(__u32 address) {
    struct peer_key peer = {.prefixlen = 32, .address = address};
    __u32 *known = bpf_map_lookup_elem(&peer_identities, &peer);
    return known ? *known : IDENTITY_WORLD;
}

/* 1 to stop: past the set's rules, or a match (recorded in the context's
 * decision). The peer's identity (0: not yet known) is looked up when a
 * rule first names one. */
static __always_inline int match_rule(__u32 index, struct match_context *context) {
    if (index >= POLICY_MAX_RULES || index >= context->set->rule_count) return 1;
    struct policy_rule *rule = &context->set->rules[index];
    if (rule->peer_identity) {
        if (!context->decision.peer_identity) context->decision.peer_identity = identity_of_address(context->address);
        if (rule->peer_identity != context->decision.peer_identity) return 0;
    }
    /* No IPv4 address (a native IPv6 peer): no CIDR of a prefix matches it,
     * and no redirect either (a policy's proxies are IPv4), so such a rule
     * is passed over for the next one or the default, never a plain allow. */
    if ((rule->peer_mask || rule->verdict == VERDICT_REDIRECT) && !context->has_address) return 0;
    if ((context->address & rule->peer_mask) != rule->peer_network) return 0;
    if (rule->protocol && rule->protocol != context->protocol) return 0;
    if ((rule->port_low || rule->port_high) && (context->port < rule->port_low || context->port > rule->port_high)) return 0;
    context->decision.verdict = rule->verdict;
    context->decision.rule_id = rule->rule_id;
    return 1;
}

/* Matches one flow of `local` (a workload identity) with a peer against
 * its policy. `peer_identity` 0: the peer's is looked up from its IPv4
 * `peer_address`, and only when a rule needs it (an LPM lookup per connect
 * saved for policies of CIDRs and ports). A native IPv6 peer: world,
 * `peer_address` 0, `has_address` 0. */
static __always_inline struct decision match_policy(void *policy_map, __u32 local, __u32 peer_identity, __u32 peer_address,
                                                    __u8 has_address, __u16 port, __u8 protocol) {
    struct policy_set *set = bpf_map_lookup_elem(policy_map, &local);
    struct match_context context = {
        .set = set, .address = peer_address, .has_address = has_address, .port = port, .protocol = protocol,
        .decision = {.verdict = VERDICT_ALLOW, .rule_id = NO_RULE, .peer_identity = peer_identity},
    };
    if (!set) return context.decision;
    __u32 default_deny = set->default_deny;
    asm volatile("" ::: "memory");
    /* A bounded loop, not bpf_loop(): no helper call and no indirect call per rule. */
    for (__u32 index = 0; index < POLICY_MAX_RULES; index++) {
        if (match_rule(index, &context)) break;
    }
    if (context.decision.rule_id == NO_RULE && default_deny) context.decision.verdict = VERDICT_DENY;
    return context.decision;
}

/* Counts a decision (its rule's counter and the totals) and reports it as
 * a flow event when events are wanted. Returns its verdict. */
static __always_inline __u8 account(struct decision decision, __u32 local, __u32 peer_address, __u8 has_address,
                                    __u16 port, __u8 protocol, __u32 direction) {
    __u8 verdict = decision.verdict;
    if (decision.rule_id != NO_RULE) {
        struct rule_counter *counter = bpf_map_lookup_elem(&rule_counters, &decision.rule_id);
        if (counter) {
            /* Atomic: ingress (softirq) can interrupt egress on the same CPU. */
            if (verdict == VERDICT_DENY) __sync_fetch_and_add(&counter->denied, 1);
            else if (verdict == VERDICT_REDIRECT) __sync_fetch_and_add(&counter->redirected, 1);
            else __sync_fetch_and_add(&counter->allowed, 1);
        }
    }
    MESH_COUNT(policy_counters, verdict == VERDICT_DENY ? POLICY_DENIED : POLICY_ALLOWED, 1);
    if (!flow_events_wanted) return verdict;
    __u32 peer_identity = decision.peer_identity ? decision.peer_identity : identity_of_address(peer_address);
    struct flow_event *event = bpf_ringbuf_reserve(&flow_events, sizeof(*event), 0);
    if (event) {
        event->timestamp_ns = bpf_ktime_get_ns();
        event->source_identity = direction == FLOW_EGRESS ? local : peer_identity;
        event->destination_identity = direction == FLOW_EGRESS ? peer_identity : local;
        event->peer_address = peer_address;
        event->destination_port = port;
        event->protocol = protocol;
        event->verdict = verdict;
        event->rule_id = decision.rule_id;
        /* The process's, on egress (connect/sendmsg run in it); ingress runs in softirq: none. */
        event->pid = direction == FLOW_EGRESS ? bpf_get_current_pid_tgid() >> 32 : 0;
        event->direction = direction;
        event->peer_is_ipv6 = !has_address;
        event->reserved[0] = event->reserved[1] = event->reserved[2] = 0;
        bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    } else {
        MESH_COUNT(policy_counters, POLICY_EVENTS_LOST, 1);
    }
    return verdict;
}

/* A redirect verdict on connect(): the connection goes to the rule's proxy
 * (redirect_connect.h), unless the workload is the node proxy itself (no
 * loops) or the proxy is of the other family; then it is only allowed.
 * Returns the verdict to account. */
static __always_inline __u8 redirect_by_rule(struct bpf_sock_addr *ctx, int is6, __u64 cgroup, __u32 identity, __u32 rule_id) {
    struct endpoint *found = bpf_map_lookup_elem(&rule_proxies, &rule_id);
    if (!found) return VERDICT_ALLOW;
    struct endpoint proxy;
    __builtin_memcpy(&proxy, found, sizeof(proxy));
    struct workload *workload = bpf_map_lookup_elem(&workloads, &cgroup);
    __u32 tenant = 0;
    if (workload) {
        if (workload->flags & WORKLOAD_IS_PROXY) return VERDICT_ALLOW;
        tenant = workload->tenant;
    }
    __u32 original[4];
    mesh_read_address(ctx, is6, original);
    enum redirect_outcome outcome = redirect_connect(ctx, is6, original, identity, tenant, &proxy);
    if (outcome == REDIRECT_SKIPPED) return VERDICT_ALLOW;
    if (outcome == REDIRECT_UNRECORDED) MESH_COUNT(policy_counters, POLICY_REDIRECT_UNRECORDED, 1);
    return VERDICT_REDIRECT;
}

/* Egress from an IPv4 socket or, `is6`, an IPv6 one: a v4-mapped
 * destination is policed as the IPv4 address it is; a native IPv6
 * destination counts as "world" with no address, so only rules for any
 * peer match it and the default applies otherwise (without this an AF_INET6
 * socket would bypass egress policy). `connecting`: connect(), where a
 * redirect verdict applies; a datagram matching a redirect rule is allowed. */
static __always_inline int decide(struct bpf_sock_addr *ctx, int is6, int connecting) {
    __u64 cgroup = bpf_get_current_cgroup_id();
    __u32 *identity = bpf_map_lookup_elem(&workload_identities, &cgroup);
    if (!identity) {
        MESH_COUNT(policy_counters, POLICY_UNMANAGED, 1);
        return 1;
    }
    __u32 local = *identity;
    int mapped = is6 ? MESH_IS_V4_MAPPED(ctx->user_ip6) : 1;
    __u32 address = is6 ? (mapped ? ctx->user_ip6[3] : 0) : ctx->user_ip4;
    __u32 peer = mapped ? 0 : IDENTITY_WORLD;   /* 0: looked up from the address when needed */
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    __u8 protocol = (__u8)ctx->protocol;
    struct decision decision = match_policy(&policies, local, peer, address, (__u8)mapped, port, protocol);
    if (decision.verdict == VERDICT_REDIRECT)
        decision.verdict = connecting ? redirect_by_rule(ctx, is6, cgroup, local, decision.rule_id) : VERDICT_ALLOW;
    return account(decision, local, address, (__u8)mapped, port, protocol, FLOW_EGRESS) == VERDICT_DENY ? 0 : 1;
}

SEC("cgroup/connect4")
int police_connect4(struct bpf_sock_addr *ctx) { return decide(ctx, 0, 1); }

SEC("cgroup/connect6")
int police_connect6(struct bpf_sock_addr *ctx) { return decide(ctx, 1, 1); }

SEC("cgroup/sendmsg6")
int police_sendmsg6(struct bpf_sock_addr *ctx) { return decide(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int police_sendmsg4(struct bpf_sock_addr *ctx) { return decide(ctx, 0, 0); }

/* The identity of the workload an arriving packet is for, if it has one. */
static __always_inline __u32 *receiving_workload(struct __sk_buff *skb) {
    __u64 cgroup = bpf_skb_cgroup_id(skb);
    return bpf_map_lookup_elem(&workload_identities, &cgroup);
}

/* Decides an arriving SYN or datagram of a workload from an IPv4 `source`
 * (`peer` 0: its identity is looked up when needed), or from an IPv6 one
 * (`peer` world, no address). */
static __always_inline int police_flow(struct __sk_buff *skb, __u32 peer, __u32 source, __u8 has_address, __u16 port, __u8 protocol) {
    __u32 *identity = receiving_workload(skb);
    if (!identity) return 1;
    __u32 local = *identity;
    struct decision decision = match_policy(&ingress_policies, local, peer, source, has_address, port, protocol);
    if (decision.verdict == VERDICT_REDIRECT) decision.verdict = VERDICT_ALLOW;   /* egress only (Swift refuses it on ingress) */
    return account(decision, local, source, has_address, port, protocol, FLOW_INGRESS) == VERDICT_DENY ? 0 : 1;
}

/* A packet whose transport header was not found or is cut short: no rule
 * can be checked against it, so a workload with an ingress policy drops it
 * (whatever its default: a deny rule for a port must not be skipped by
 * hiding the port), and one without lets it through. */
static __always_inline int police_undecidable(struct __sk_buff *skb) {
    __u32 *identity = receiving_workload(skb);
    if (!identity) return 1;
    __u32 local = *identity;
    if (!bpf_map_lookup_elem(&ingress_policies, &local)) return 1;
    MESH_COUNT(policy_counters, POLICY_DENIED, 1);
    return 0;
}

/* Arriving packets: the first of each flow is decided (flow_start.h). An
 * IPv6 peer is world with no IPv4 address (policy CIDRs and peer identities
 * are IPv4, as on egress): rules for any peer or for world match it, CIDRs
 * of a prefix do not. Other transports (ICMP, SCTP) pass. */
SEC("cgroup_skb/ingress")
int police_ingress(struct __sk_buff *skb) {
    struct flow_start start;
    int result = read_flow_start(skb, &start);
    if (result == FLOW_NOT_A_START) return 1;
    if (result == FLOW_UNDECIDABLE) return police_undecidable(skb);
    if (start.is6) return police_flow(skb, IDENTITY_WORLD, 0, 0, start.destination_port, start.protocol);
    return police_flow(skb, 0, start.source[3], 1, start.destination_port, start.protocol);
}
