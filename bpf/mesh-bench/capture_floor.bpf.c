// mesh-bench: the least a capture that reads every call's data can do on
// the HTTP capture's own hooks — the baseline its BPF time is measured
// against. Per call: the cgroup check (the same range and hash), the system
// call's buffer from its registers, one ring record with a timestamp, the
// socket (its address, the cheapest connection identity), the length and
// the call's first 64 bytes read straight into it. No connection state, no
// parsing, no counters, no TLS, no endpoints: what any such design pays
// before it does anything of its own. With `records_wanted` 0, the lower
// floor of any design that reads every call at all: the same check and the
// same read, into per-CPU scratch memory, and nothing sent anywhere.
#include "syscall_registers.h"

char LICENSE[] SEC("license") = "GPL";

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);              /* cgroup id */
    __type(value, __u64);
} watched_workloads SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

volatile __u64 watched_lowest = ~0ULL;
volatile __u64 watched_highest;

struct floor_record {
    __u64 timestamp_ns;
    __u64 socket;
    __u32 length;
    __u32 reserved;
    __u8 data[64];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct floor_record);
} scratch SEC(".maps");

/* 0: read each call's first bytes into scratch memory and send nothing. */
const volatile __u32 records_wanted = 1;

static __always_inline int record_call(void *sk, int length) {
    __u64 cgroup = bpf_get_current_cgroup_id();
    if (cgroup < watched_lowest || cgroup > watched_highest) return 0;
    if (!bpf_map_lookup_elem(&watched_workloads, &cgroup)) return 0;
    struct pt_regs *regs = syscall_registers();
    if (!regs) return 0;
    __u64 buffer = regs->si;   /* right for read(2)/write(2) only: the benchmark's C client and server make no other calls */
    if (!records_wanted) {
        __u32 zero = 0;
        struct floor_record *copy = bpf_map_lookup_elem(&scratch, &zero);
        if (copy) bpf_probe_read_user(copy->data, sizeof(copy->data), (void *)buffer);
        return 0;
    }
    struct floor_record *record = bpf_ringbuf_reserve(&events, sizeof(*record), 0);
    if (!record) return 0;
    record->timestamp_ns = bpf_ktime_get_ns();
    record->socket = (__u64)sk;
    record->length = (__u32)length;
    record->reserved = 0;
    bpf_probe_read_user(record->data, sizeof(record->data), (void *)buffer);   /* zeroes it on failure */
    bpf_ringbuf_submit(record, BPF_RB_NO_WAKEUP);
    return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(floor_send, void *sk, int length, int flags) { return record_call(sk, length); }

SEC("tp_btf/sock_recv_length")
int BPF_PROG(floor_receive, void *sk, int length, int flags) { return record_call(sk, length); }
