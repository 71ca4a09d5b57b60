#include "CBenchBaseline.h"
#include <bpf/bpf.h>

uint64_t baseline_hash_lookups(int map_fd, uint32_t keys, uint64_t iterations) {
    uint64_t found = 0, value;
    for (uint64_t i = 0; i < iterations; i++) {
        uint32_t key = (uint32_t)(i % keys);
        if (bpf_map_lookup_elem(map_fd, &key, &value) == 0) found += value & 1;
    }
    return found;
}

uint64_t baseline_hash_updates(int map_fd, uint32_t keys, uint64_t iterations) {
    uint64_t failures = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        uint32_t key = (uint32_t)(i % keys);
        uint64_t value = i;
        if (bpf_map_update_elem(map_fd, &key, &value, BPF_ANY) != 0) failures++;
    }
    return failures;
}
