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
/* Protocol numbers, as the kernel's headers spell them (linux/in.h and
 * linux/if_ether.h are not included: the former declares them as an enum). */
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
#endif
#ifndef ETH_P_IP
#define ETH_P_IP 0x0800
#endif
#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif

/* Whether four 32-bit words (network order) hold an IPv4-mapped IPv6
 * address, ::ffff:a.b.c.d, as dual-stack sockets use to reach IPv4 peers.
 * Takes the array expression (ctx->user_ip6, ops->local_ip6) so every read
 * stays at a constant context offset. */
#define MESH_IS_V4_MAPPED(words) ((words)[0] == 0 && (words)[1] == 0 && (words)[2] == bpf_htonl(0xFFFF))

/* Sets four words (network order) to the IPv4-mapped form of `ip4`. The
 * datapath keeps every address this way, so one table serves IPv4 sockets,
 * IPv6 sockets on mapped addresses and native IPv6. */
#define MESH_MAP_V4(words, ip4) \
    do { (words)[0] = 0; (words)[1] = 0; (words)[2] = bpf_htonl(0xFFFF); (words)[3] = (ip4); } while (0)

/* Reads a sock_addr context's address (user_ip4 or user_ip6) into the
 * mapped form. `is6` must be a constant: each branch reads fields only its
 * hook may read. */
static __always_inline void mesh_read_address(struct bpf_sock_addr *ctx, int is6, __u32 words[4]) {
    if (is6) {
        words[0] = ctx->user_ip6[0]; words[1] = ctx->user_ip6[1];
        words[2] = ctx->user_ip6[2]; words[3] = ctx->user_ip6[3];
    } else {
        MESH_MAP_V4(words, ctx->user_ip4);
    }
}

/* Writes a mapped-form address into a sock_addr context: all four words on
 * an IPv6 socket, the last one on an IPv4 socket (the caller checked that
 * the address is IPv4). */
static __always_inline void mesh_write_address(struct bpf_sock_addr *ctx, int is6, const __u32 words[4]) {
    if (is6) {
        ctx->user_ip6[0] = words[0]; ctx->user_ip6[1] = words[1];
        ctx->user_ip6[2] = words[2]; ctx->user_ip6[3] = words[3];
    } else {
        ctx->user_ip4 = words[3];
    }
}

/* Adds `delta` to slot `index` of a per-CPU or array counter map. */
#define MESH_COUNT(map, index, delta)                                  \
    do {                                                               \
        __u32 __key = (index);                                         \
        __u64 *__value = bpf_map_lookup_elem(&(map), &__key);          \
        if (__value) __sync_fetch_and_add(__value, (delta));           \
    } while (0)

#endif
