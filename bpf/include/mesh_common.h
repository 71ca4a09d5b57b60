/* Common includes and helpers for the mesh's BPF programs. */
#ifndef MESH_COMMON_H
#define MESH_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
/* Whether four 32-bit words (network order) hold an IPv4-mapped IPv6
 * address, ::ffff:a.b.c.d, as dual-stack sockets use to reach IPv4 peers.
 * Takes the array expression (ctx->user_ip6, ops->local_ip6) so every read
 * stays at a constant context offset. */
#define MESH_IS_V4_MAPPED(words) ((words)[0] == 0 && (words)[1] == 0 && (words)[2] == bpf_htonl(0xFFFF))

#endif
#ifndef AF_INET6
#define AF_INET6 10
/* Whether four 32-bit words (network order) hold an IPv4-mapped IPv6
 * address, ::ffff:a.b.c.d, as dual-stack sockets use to reach IPv4 peers.
 * Takes the array expression (ctx->user_ip6, ops->local_ip6) so every read
 * stays at a constant context offset. */
#define MESH_IS_V4_MAPPED(words) ((words)[0] == 0 && (words)[1] == 0 && (words)[2] == bpf_htonl(0xFFFF))

#endif

/* Adds `delta` to slot `index` of a per-CPU or array counter map. */
#define MESH_COUNT(map, index, delta)                                  \
    do {                                                               \
        __u32 __key = (index);                                         \
        __u64 *__value = bpf_map_lookup_elem(&(map), &__key);          \
        if (__value) __sync_fetch_and_add(__value, (delta));           \
    } while (0)

/* Whether four 32-bit words (network order) hold an IPv4-mapped IPv6
 * address, ::ffff:a.b.c.d, as dual-stack sockets use to reach IPv4 peers.
 * Takes the array expression (ctx->user_ip6, ops->local_ip6) so every read
 * stays at a constant context offset. */
#define MESH_IS_V4_MAPPED(words) ((words)[0] == 0 && (words)[1] == 0 && (words)[2] == bpf_htonl(0xFFFF))

#endif
