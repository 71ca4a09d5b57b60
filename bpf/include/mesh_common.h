/* Common includes and helpers for the mesh's BPF programs. */
#ifndef MESH_COMMON_H
#define MESH_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Adds `delta` to slot `index` of a per-CPU or array counter map. */
#define MESH_COUNT(map, index, delta)                                  \
    do {                                                               \
        __u32 __key = (index);                                         \
        __u64 *__value = bpf_map_lookup_elem(&(map), &__key);          \
        if (__value) __sync_fetch_and_add(__value, (delta));           \
    } while (0)

#endif
