// A BPF program that has nothing to do with the mesh: count system calls per
// process, to show bpf2swift on any program. Attached to raw_tp/sys_enter.
#include "mesh_common.h"

char LICENSE[] SEC("license") = "GPL";

struct process_stats {
    __u64 calls;
    __u64 last_seen_ns;
    __u32 last_syscall;
    __u32 pid;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct process_stats);
} per_process SEC(".maps");

/* Count only this process and its threads when non-zero (set before load). */
const volatile __u32 only_pid = 0;
/* System calls seen in total, by every process counted. */
__u64 total_calls;

SEC("raw_tp/sys_enter")
int count_syscall(__u64 *context) {
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (only_pid && pid != only_pid) return 0;
    struct process_stats *stats = bpf_map_lookup_elem(&per_process, &pid);
    if (!stats) {
        struct process_stats fresh = {.pid = pid};
        bpf_map_update_elem(&per_process, &pid, &fresh, BPF_NOEXIST);
        stats = bpf_map_lookup_elem(&per_process, &pid);
        if (!stats) return 0;
    }
    __sync_fetch_and_add(&stats->calls, 1);
    stats->last_seen_ns = bpf_ktime_get_ns();
    stats->last_syscall = (__u32)context[1];  /* raw_tp sys_enter args: (regs, id) */
    __sync_fetch_and_add(&total_calls, 1);
    return 0;
}
