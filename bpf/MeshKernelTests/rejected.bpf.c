// A program the verifier must refuse: it reads past the end of a map value.
#include "mesh_common.h"

char LICENSE[] SEC("license") = "GPL";

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} small SEC(".maps");

SEC("syscall")
int read_past_value(void *context) {
    __u32 key = 0;
    __u64 *value = bpf_map_lookup_elem(&small, &key);
    if (!value) return 0;
    return (int)value[2];   /* value_size is 8: offset 16 is out of bounds */
}

SEC("syscall")
int harmless(void *context) {
    return 0;
}
