/* Shared between bpf/MeshKernel/sock_redirect.bpf.c and Swift
 * (Sources/MeshKernel/Datapath/SocketAcceleration.swift mirrors these; a test
 * checks the sizes against the object's BTF). */
#ifndef SOCK_REDIRECT_H
#define SOCK_REDIRECT_H

#include <linux/types.h>

/* A TCP connection's local end, as seen from that socket: both addresses
 * and ports, IPv4-mapped into 16-byte IPv6 form so one map holds both
 * families. Ports are in host byte order. */
struct sock_key {
    __u8 local_ip[16];
    __u8 remote_ip[16];
    __u32 local_port;
    __u32 remote_port;
    __u64 netns;      /* network namespace cookie: the same 4-tuple in two namespaces is two connections */
};

/* Slots of the `accel_counters` array. */
enum accel_counter {
    ACCEL_SOCKETS_ADDED = 0,      /* established sockets put into the sockhash */
    ACCEL_SOCKETS_REMOVED = 1,    /* sockets that left it on close */
    ACCEL_MSGS_REDIRECTED = 2,    /* sendmsg calls moved socket-to-socket */
    ACCEL_BYTES_REDIRECTED = 3,   /* bytes in those calls */
    ACCEL_MSGS_PASSED = 4,        /* sendmsg calls without a local peer */
    ACCEL_INSERT_FAILED = 5,      /* sockets the sockhash had no room for */
    ACCEL_COUNTER_COUNT = 8,
};

#endif
