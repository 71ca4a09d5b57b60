/* The first packet of a flow, as cgroup_skb programs see an arriving packet
 * (skb->data is the network header): a TCP SYN without ACK or a UDP
 * datagram, over IPv4 or IPv6 (after up to eight extension headers, within
 * the packet's first FLOW_HEADER_BYTES; further is undecidable). Read
 * in place when the headers are in the packet's linear part, else from a
 * copy. Shared by the ingress policy and the redirect's proxy side. */
#ifndef FLOW_START_H
#define FLOW_START_H

#include "mesh_common.h"

/* Where a flow starts: addresses in mapped form (IPv4 as ::ffff:a.b.c.d),
 * network order; ports host order. */
struct flow_start {
    __u32 source[4];
    __u32 destination[4];
    __u16 source_port;
    __u16 destination_port;
    __u8 is6;
    __u8 protocol;           /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 reserved[2];
};

enum flow_start_result {
    FLOW_NOT_A_START = 0,    /* another packet of a flow, or another transport (ICMP, SCTP) */
    FLOW_START = 1,          /* `start` is filled */
    FLOW_UNDECIDABLE = 2,    /* the transport header was not found, or is cut short */
};

#define FLOW_IPV6_HOP_BY_HOP 0
#define FLOW_IPV6_ROUTING 43
#define FLOW_IPV6_FRAGMENT 44
#define FLOW_IPV6_DESTINATION_OPTIONS 60
#define FLOW_IPV6_EXTENSION(next) ((next) == FLOW_IPV6_HOP_BY_HOP || (next) == FLOW_IPV6_ROUTING \
                                   || (next) == FLOW_IPV6_FRAGMENT || (next) == FLOW_IPV6_DESTINATION_OPTIONS)

/* How far into a packet a flow's headers are looked for: the network and
 * transport headers (with IPv6 extension headers) within its first bytes. */
#define FLOW_HEADER_BYTES 128

/* Reads a flow's start from the network header at `ip`, the bytes ending at
 * `end` (in the packet, or a copy of it). Offsets stay below
 * FLOW_HEADER_BYTES, so the verifier sees every read inside either. -1: the
 * headers go past `end`. */
static __always_inline int flow_start_in(const __u8 *ip, const __u8 *end, int is6, struct flow_start *start) {
    __u32 offset;
    __u8 protocol;
    if (is6) {
        if (ip + 40 > end) return -1;
        protocol = ip[6];
        offset = 40;
        for (int i = 0; i < 8 && FLOW_IPV6_EXTENSION(protocol); i++) {
            if (offset > FLOW_HEADER_BYTES - 14) return FLOW_UNDECIDABLE;
            if (ip + offset + 2 > end) return -1;
            __u32 length = protocol == FLOW_IPV6_FRAGMENT ? 8 : ((__u32)ip[offset + 1] + 1) * 8;
            protocol = ip[offset];
            offset += length;
        }
        if (FLOW_IPV6_EXTENSION(protocol)) return FLOW_UNDECIDABLE;
    } else {
        if (ip + 20 > end) return -1;
        offset = (ip[0] & 0x0F) * 4;
        if (offset < 20) return FLOW_UNDECIDABLE;
        protocol = ip[9];
    }
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) return FLOW_NOT_A_START;
    if (offset > FLOW_HEADER_BYTES - 14) return FLOW_UNDECIDABLE;
    /* TCP: up to the flags (byte 13); UDP: the ports. */
    const __u8 *transport = ip + offset;
    if (transport + (protocol == IPPROTO_TCP ? 14 : 4) > end) return -1;
    if (protocol == IPPROTO_TCP && (transport[13] & 0x12) != 0x02) return FLOW_NOT_A_START;
    start->is6 = is6;
    start->protocol = protocol;
    start->source_port = (__u16)transport[0] << 8 | transport[1];
    start->destination_port = (__u16)transport[2] << 8 | transport[3];
    if (is6) {
        __builtin_memcpy(start->source, ip + 8, 16);
        __builtin_memcpy(start->destination, ip + 24, 16);
    } else {
        __u32 source, destination;
        __builtin_memcpy(&source, ip + 12, 4);
        __builtin_memcpy(&destination, ip + 16, 4);
        MESH_MAP_V4(start->source, source);
        MESH_MAP_V4(start->destination, destination);
    }
    return FLOW_START;
}

/* The same from a copy of the packet's first bytes, for headers not all in
 * its linear part (rare: a flow's first packet is small). Headers longer
 * than the copy are undecidable. */
static __noinline int flow_start_copied(struct __sk_buff *skb, int is6, struct flow_start *start) {
    __u8 headers[FLOW_HEADER_BYTES] = {};
    __u32 length = skb->len < sizeof(headers) ? skb->len : sizeof(headers);
    barrier_var(length);
    if (length < 20 || length > sizeof(headers) || bpf_skb_load_bytes(skb, 0, headers, length) < 0) return FLOW_UNDECIDABLE;
    int result = flow_start_in(headers, headers + length, is6, start);
    return result < 0 ? FLOW_UNDECIDABLE : result;
}

/* Whether an arriving packet starts a flow (enum flow_start_result). Every
 * packet a program sees comes here, so all but a flow's first leave after a
 * few loads from the packet itself. */
static __always_inline int read_flow_start(struct __sk_buff *skb, struct flow_start *start) {
    int is6 = skb->protocol == bpf_htons(ETH_P_IPV6);
    if (!is6 && skb->protocol != bpf_htons(ETH_P_IP)) return FLOW_NOT_A_START;
    const __u8 *ip = (const __u8 *)(long)skb->data, *end = (const __u8 *)(long)skb->data_end;
    int result = flow_start_in(ip, end, is6, start);
    return result < 0 ? flow_start_copied(skb, is6, start) : result;
}

#endif
