#include <stdint.h>
/// Raw libbpf baselines for mesh-bench: the same work as the Swift typed API, in C.
uint64_t baseline_hash_lookups(int map_fd, uint32_t keys, uint64_t iterations);
uint64_t baseline_hash_updates(int map_fd, uint32_t keys, uint64_t iterations);
/// Drains a ring buffer map with libbpf's ring_buffer__consume and a C callback; returns records.
int64_t baseline_ringbuf_drain(int map_fd);
/// Pins the calling thread, and threads it starts afterwards, to one CPU.
int bench_pin_to_cpu(int cpu);
