#include <stdint.h>
/// Raw libbpf baselines for mesh-bench: the same work as the Swift typed API, in C.
uint64_t baseline_hash_lookups(int map_fd, uint32_t keys, uint64_t iterations);
uint64_t baseline_hash_updates(int map_fd, uint32_t keys, uint64_t iterations);
