// Maps of every type the typed-map tests exercise, and two programs run
// through BPF_PROG_TEST_RUN: a ring buffer producer and a per-CPU counter.
#include "mesh_common.h"
#include "test_types.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(struct test_event);
BPF2SWIFT_EXPORT(struct produce_args);

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct flow_key);
    __type(value, struct flow_stats);
} flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} tiny_hash SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 128);
    __type(key, __u64);
    __type(value, __u64);
} recent SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, struct flow_stats);
} slots SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} per_cpu_hash SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} per_cpu_counters SEC(".maps");

struct ipv4_lpm_key {
    __u32 prefixlen;
    __u32 address;
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 64);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct ipv4_lpm_key);
    __type(value, __u32);
} cidrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} sockets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKMAP);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} socket_slots SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Records the producer could not reserve (ring full). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} events_lost SEC(".maps");

struct produce_loop {
    struct produce_args *args;
    __u32 cpu;
    __u32 count;
};

static long produce_one(__u64 index, void *context) {
    struct produce_loop *loop = context;
    struct test_event *event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
    if (!event) {
        MESH_COUNT(events_lost, 0, 1);
        return 0;
    }
    event->sequence = loop->args->first_sequence + index;
    event->value = index * 3 + 1;
    event->cpu = loop->cpu;
    event->kind = loop->args->kind;
    /* Wake the reader only at the end of a burst, as a production program would. */
    bpf_ringbuf_submit(event, index + 1 == loop->count ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
    return 0;
}

SEC("syscall")
int produce_events(struct produce_args *args) {
    __u32 count = args->count;
    if (count > 1000000) count = 1000000;
    struct produce_loop loop = {.args = args, .cpu = bpf_get_smp_processor_id(), .count = count};
    bpf_loop(count, produce_one, &loop, 0);
    return 0;
}

SEC("syscall")
int bump_counters(struct produce_args *args) {
    __u32 slot = args->kind & 3;
    __u64 *value = bpf_map_lookup_elem(&per_cpu_counters, &slot);
    if (value) *value += args->count;
    return 0;
}
