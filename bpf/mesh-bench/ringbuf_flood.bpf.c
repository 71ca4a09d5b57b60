// mesh-bench: fills a large ring buffer with small records as fast as the
// kernel can, for measuring how fast user space drains it.
#include "mesh_common.h"

char LICENSE[] SEC("license") = "GPL";

struct flood_record {
    __u64 sequence;
    __u64 timestamp;
    __u32 cpu;
    __u32 size;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 25);
} flood SEC(".maps");

struct flood_args {
    __u32 count;
    __u32 pad;
};

static long flood_one(__u64 index, void *context) {
    struct flood_record *record = bpf_ringbuf_reserve(&flood, sizeof(*record), 0);
    if (!record) return 1;  /* ring full: stop */
    record->sequence = index;
    record->timestamp = 0;
    record->cpu = 0;
    record->size = sizeof(*record);
    bpf_ringbuf_submit(record, BPF_RB_NO_WAKEUP);
    return 0;
}

SEC("syscall")
int fill(struct flood_args *args) {
    __u32 count = args->count;
    if (count > 4000000) count = 4000000;
    return bpf_loop(count, flood_one, 0, 0);
}
