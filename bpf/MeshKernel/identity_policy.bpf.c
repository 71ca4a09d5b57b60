// Identity-based L3/L4 egress policy at the socket level: the identity of a
// workload comes from its cgroup, the peer's from its address (an LPM trie
// of known workload addresses; everything else is "world"), and the
// workload's policy set decides — first matching rule wins, else the default.
// A denied connect()/sendmsg() fails with EPERM in the application. Every
// decision is counted per rule and sent as a flow event.
#include "mesh_common.h"
#include "identity_policy.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(enum reserved_identity);
BPF2SWIFT_EXPORT(enum verdict);
BPF2SWIFT_EXPORT(enum policy_counter);
BPF2SWIFT_EXPORT(struct flow_event);

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
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);          /* rule id */
    __type(value, struct rule_counter);
} rule_counters SEC(".maps");

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

struct match_context {
    struct policy_set *set;
    __u32 peer_identity;
    __u32 address;
    __u16 port;
    __u8 protocol;
    __s32 match;
};

static long match_rule(__u64 index, void *data) {
    struct match_context *context = data;
    if (index >= POLICY_MAX_RULES || index >= context->set->rule_count) return 1;
    struct policy_rule *rule = &context->set->rules[index];
    if (rule->peer_identity && rule->peer_identity != context->peer_identity) return 0;
    if ((context->address & rule->peer_mask) != rule->peer_network) return 0;
    if (rule->protocol && rule->protocol != context->protocol) return 0;
    if ((rule->port_low || rule->port_high) && (context->port < rule->port_low || context->port > rule->port_high)) return 0;
    context->match = (__s32)index;
    return 1;
}

static __always_inline int decide(struct bpf_sock_addr *ctx) {
    __u64 cgroup = bpf_get_current_cgroup_id();
    __u32 *identity = bpf_map_lookup_elem(&workload_identities, &cgroup);
    if (!identity) {
        MESH_COUNT(policy_counters, POLICY_UNMANAGED, 1);
        return 1;
    }
    __u32 source = *identity;
    struct policy_set *set = bpf_map_lookup_elem(&policies, &source);
    struct peer_key peer = {.prefixlen = 32, .address = ctx->user_ip4};
    __u32 *known = bpf_map_lookup_elem(&peer_identities, &peer);
    struct match_context context = {
        .set = set, .peer_identity = known ? *known : IDENTITY_WORLD, .address = ctx->user_ip4,
        .port = bpf_ntohs((__u16)ctx->user_port), .protocol = (__u8)ctx->protocol, .match = -1,
    };
    __u8 verdict = VERDICT_ALLOW;
    __u32 rule_id = NO_RULE;
    if (set) {
        bpf_loop(POLICY_MAX_RULES, match_rule, &context, 0);
        if (context.match >= 0 && context.match < POLICY_MAX_RULES) {
            struct policy_rule *rule = &set->rules[context.match];
            verdict = rule->verdict;
            rule_id = rule->rule_id;
            struct rule_counter *counter = bpf_map_lookup_elem(&rule_counters, &rule_id);
            if (counter) {
                if (verdict == VERDICT_DENY) counter->denied++; else counter->allowed++;
            }
        } else if (set->default_deny) {
            verdict = VERDICT_DENY;
        }
    }
    MESH_COUNT(policy_counters, verdict == VERDICT_DENY ? POLICY_DENIED : POLICY_ALLOWED, 1);
    struct flow_event *event = bpf_ringbuf_reserve(&flow_events, sizeof(*event), 0);
    if (event) {
        event->timestamp_ns = bpf_ktime_get_ns();
        event->source_identity = source;
        event->destination_identity = context.peer_identity;
        event->destination_address = ctx->user_ip4;
        event->destination_port = context.port;
        event->protocol = context.protocol;
        event->verdict = verdict;
        event->rule_id = rule_id;
        event->pid = bpf_get_current_pid_tgid() >> 32;
        bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    } else {
        MESH_COUNT(policy_counters, POLICY_EVENTS_LOST, 1);
    }
    return verdict == VERDICT_DENY ? 0 : 1;
}

SEC("cgroup/connect4")
int police_connect4(struct bpf_sock_addr *ctx) { return decide(ctx); }

SEC("cgroup/sendmsg4")
int police_sendmsg4(struct bpf_sock_addr *ctx) { return decide(ctx); }
