/* Shared between bpf/MeshKernel/identity_policy.bpf.c and Swift (generated
 * by bpf2swift as IdentityPolicyObject.*). Addresses in network order, ports
 * in host order. */
#ifndef IDENTITY_POLICY_H
#define IDENTITY_POLICY_H

#include <linux/types.h>

#define POLICY_MAX_RULES 32

enum reserved_identity {
    IDENTITY_UNKNOWN = 0,
    IDENTITY_HOST = 1,    /* the node itself */
    IDENTITY_WORLD = 2,   /* anything outside the mesh */
};

enum verdict {
    VERDICT_ALLOW = 1,
    VERDICT_DENY = 2,
    VERDICT_REDIRECT = 3,   /* egress TCP connect(): allowed, and sent to the rule's proxy (rule_proxies) */
};

/* One rule (egress or ingress); every field that is zero matches anything. */
struct policy_rule {
    __u32 peer_identity;   /* 0: any identity */
    __u32 peer_network;    /* with peer_mask: a CIDR; mask 0 matches every address */
    __u32 peer_mask;
    __u16 port_low;        /* 0..65535, inclusive range; 0-0 matches every port */
    __u16 port_high;
    __u8 protocol;         /* 0: any; 6 TCP; 17 UDP */
    __u8 verdict;          /* enum verdict */
    __u16 rule_id;         /* index into rule_counters */
};

/* The policy of one identity for one direction: rules in order, first match wins. */
struct policy_set {
    __u32 default_deny;    /* 1: connections matching no rule are denied */
    __u32 rule_count;
    struct policy_rule rules[POLICY_MAX_RULES];
};

struct rule_counter {
    __u64 allowed;
    __u64 denied;
    __u64 redirected;
};

struct peer_key {
    __u32 prefixlen;
    __u32 address;
};

enum flow_direction {
    FLOW_EGRESS = 1,    /* a workload connecting out (connect/sendmsg) */
    FLOW_INGRESS = 2,   /* a connection or datagram arriving at a workload */
};

/* An L3/L4 flow event for telemetry. For egress the source is the local
 * workload; for ingress the destination is. */
struct flow_event {
    __u64 timestamp_ns;
    __u32 source_identity;
    __u32 destination_identity;
    __u32 peer_address;       /* the remote end: destination (egress) or source (ingress) */
    __u16 destination_port;   /* host order */
    __u8 protocol;
    __u8 verdict;
    __u32 rule_id;            /* 0xffff: no rule matched (the default applied) */
    __u32 pid;                /* 0 for ingress */
    __u32 direction;          /* enum flow_direction */
    __u8 peer_is_ipv6;        /* 1: a native IPv6 peer, whose address is not kept (`peer_address` 0) */
    __u8 reserved[3];
};

enum policy_counter {
    POLICY_ALLOWED = 0,
    POLICY_DENIED = 1,
    POLICY_UNMANAGED = 2,      /* sockets of cgroups without an identity: not policed */
    POLICY_EVENTS_LOST = 3,    /* flow events the ring buffer had no room for */
    POLICY_REDIRECT_UNRECORDED = 4, /* redirected, but the pending-redirect table had no room: the proxy gets no original destination */
    POLICY_COUNTER_COUNT = 5,
};

#endif
