#define _GNU_SOURCE
#include <sched.h>
#include "CBenchBaseline.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

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

static int count_record(void *context, void *data, size_t size) {
    (void)data;
    (void)size;
    (*(int64_t *)context)++;
    return 0;
}

int64_t baseline_ringbuf_drain(int map_fd) {
    int64_t count = 0;
    struct ring_buffer *ring = ring_buffer__new(map_fd, count_record, &count, NULL);
    if (!ring) return -1;
    ring_buffer__consume(ring);
    ring_buffer__free(ring);
    return count;
}


int bench_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}
