// HTTP visibility without a proxy: every send and receive call of a watched
// workload's TCP sockets is seen at the socket layer's own tracepoints
// (tp_btf/sock_send_length and sock_recv_length, which fire after the call
// with the bytes it moved), and the call's data is read from the user buffer
// the system call named (its registers). Only calls that start — or
// continue — a message head copy data; body calls of HTTP connections send
// a short event (their length and last bytes); connections that never looked
// like HTTP (TLS, binary protocols) send nothing and are only counted.
// Events go to a ring buffer that wakes its reader only when a batch is
// waiting, so the cost per request stays near the BPF run time.
//
// x86_64 system call numbers; other architectures are refused by the Swift side.
#include "mesh_common.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "http_capture.h"
#include "bpf2swift.h"

char LICENSE[] SEC("license") = "GPL";

BPF2SWIFT_EXPORT(struct http_io_event);
BPF2SWIFT_EXPORT(enum http_io_kind);
BPF2SWIFT_EXPORT(enum http_counter);

/* The kernel types read here, by field name: libbpf relocates the offsets
 * against the running kernel's BTF (CO-RE), so no vmlinux.h is needed. */
struct in6_addr { __u32 words[4]; };
struct sock_common {
    __u32 skc_daddr;
    __u32 skc_rcv_saddr;
    __u16 skc_dport;
    __u16 skc_num;
    unsigned short skc_family;
    struct in6_addr skc_v6_daddr;
    struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
    struct sock_common __sk_common;
    __u16 sk_type;
    __u16 sk_protocol;
} __attribute__((preserve_access_index));
struct pt_regs {
    unsigned long di, si, dx, orig_ax;
} __attribute__((preserve_access_index));

#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define MSG_PEEK 2
#define TCP_CLOSE 7
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
/* Calls captured after a head that did not end its message head. */
#define HEAD_CONTINUATION_CALLS 4
#define WAKE_THRESHOLD (256 * 1024)

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);              /* cgroup id */
    __type(value, struct watched_workload);
} watched_workloads SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);              /* socket cookie */
    __type(value, struct http_connection);
} connections SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, HTTP_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} http_counters SEC(".maps");

/* An event under construction: header and captured data, per CPU. */
struct scratch {
    struct http_io_event event;
    __u8 data[HTTP_CAPTURE_BYTES];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
} scratch_space SEC(".maps");

/* Per-CPU counters need no atomics: a tracing program does not nest on one CPU. */
static __always_inline void count(__u32 index, __u64 delta) {
    __u64 *value = bpf_map_lookup_elem(&http_counters, &index);
    if (value) *value += delta;
}

/* Where the current system call's data is: the first buffer, its length,
 * and the iovec array (for the tail), if any. */
struct user_data {
    __u64 first;
    __u64 first_length;
    __u64 iov;
    __u64 iov_count;
};

static __always_inline int find_user_data(int kind, struct user_data *data) {
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    if (!regs) return -1;
    __u64 number = BPF_CORE_READ(regs, orig_ax), arg1 = BPF_CORE_READ(regs, si), arg2 = BPF_CORE_READ(regs, dx);
    int sending = kind == HTTP_IO_SEND;
    if (number == (sending ? NR_WRITE : NR_READ) || number == (sending ? NR_SENDTO : NR_RECVFROM)) {
        data->first = arg1;
        data->first_length = arg2;
        data->iov = 0;
        return 0;
    }
    if (number == (sending ? NR_WRITEV : NR_READV)) {
        data->iov = arg1;
        data->iov_count = arg2;
    } else if (number == (sending ? NR_SENDMSG : NR_RECVMSG)) {
        /* struct user_msghdr: name, namelen, iov at 16, iovlen at 24. */
        if (bpf_probe_read_user(&data->iov, 8, (void *)(arg1 + 16)) < 0) return -1;
        if (bpf_probe_read_user(&data->iov_count, 8, (void *)(arg1 + 24)) < 0) return -1;
    } else {
        return -1;   /* sendfile, splice, io_uring: length only */
    }
    if (data->iov_count == 0) return -1;
    __u64 first[2];
    if (bpf_probe_read_user(first, sizeof(first), (void *)data->iov) < 0) return -1;
    data->first = first[0];
    data->first_length = first[1];
    return 0;
}

/* The last up to 8 bytes of the `length` bytes the call moved. */
static __always_inline void read_tail(struct user_data *data, __u32 length, struct http_io_event *event) {
    __u64 base = 0, available = 0;
    if (!data->iov || data->iov_count == 1) {
        base = data->first;
        available = length < data->first_length ? length : data->first_length;
    } else {
        /* Find the iovec holding the last byte (the first four only). */
        __u64 left = length;
        for (int index = 0; index < 4; index++) {
            if (index >= data->iov_count) break;
            __u64 entry[2];
            if (bpf_probe_read_user(entry, sizeof(entry), (void *)(data->iov + index * 16)) < 0) return;
            if (left <= entry[1]) { base = entry[0]; available = left; break; }
            left -= entry[1];
        }
    }
    if (available == 0) return;
    __u64 take = available < HTTP_TAIL_BYTES ? available : HTTP_TAIL_BYTES;
    barrier_var(take);
    if (take > HTTP_TAIL_BYTES) return;
    if (bpf_probe_read_user(event->tail, take, (void *)(base + available - take)) == 0) event->tail_length = (__u8)take;
}

/* Whether the bytes look like the start of an HTTP/1 message head: a method
 * and a space, or "HTTP/1." — or a prefix of one, for a call shorter than that. */
static __always_inline int starts_head(const __u8 *bytes, __u32 length) {
    if (length == 0) return 0;
    __u32 n = length < 8 ? length : 8;
    /* Compare with each candidate over the bytes present. */
#define MATCHES(text) ({                                                   \
        const char *__t = text; int __ok = 1;                              \
        for (int __i = 0; __i < 8; __i++) {                                \
            if (__i >= (int)n || __t[__i] == 0) break;                     \
            if (bytes[__i] != (__u8)__t[__i]) { __ok = 0; break; }         \
        }                                                                  \
        __ok; })
    return MATCHES("GET ") || MATCHES("POST ") || MATCHES("PUT ") || MATCHES("HEAD ") || MATCHES("HTTP/1.")
        || MATCHES("DELETE ") || MATCHES("PATCH ") || MATCHES("OPTIONS ") || MATCHES("CONNECT ") || MATCHES("TRACE ");
#undef MATCHES
}

static __always_inline void fill_addresses(struct sock *sk, struct http_io_event *event) {
    __u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    event->family = family;
    event->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
    event->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    if (family == AF_INET) {
        MESH_MAP_V4(event->local_address, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
        MESH_MAP_V4(event->remote_address, BPF_CORE_READ(sk, __sk_common.skc_daddr));
    } else {
        BPF_CORE_READ_INTO(&event->local_address, sk, __sk_common.skc_v6_rcv_saddr);
        BPF_CORE_READ_INTO(&event->remote_address, sk, __sk_common.skc_v6_daddr);
    }
}

static __always_inline void submit(struct scratch *scratch, __u32 captured) {
    __u64 size = sizeof(struct http_io_event) + captured;
    if (size > sizeof(struct scratch)) return;
    __u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_THRESHOLD ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_output(&events, scratch, size, flags) != 0) count(HTTP_EVENTS_LOST, 1);
}

static __always_inline int observe(struct sock *sk, int length, int flags, int kind) {
    if (length <= 0 || (kind == HTTP_IO_RECEIVE && (flags & MSG_PEEK))) return 0;
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || BPF_CORE_READ(sk, sk_type) != SOCK_STREAM) return 0;
    __u64 cgroup = bpf_get_current_cgroup_id();
    struct watched_workload *workload = bpf_map_lookup_elem(&watched_workloads, &cgroup);
    if (!workload) return 0;
    count(HTTP_CALLS_WATCHED, 1);
    count(kind == HTTP_IO_SEND ? HTTP_BYTES_SENT : HTTP_BYTES_RECEIVED, length);

    __u32 zero = 0;
    struct scratch *scratch = bpf_map_lookup_elem(&scratch_space, &zero);
    if (!scratch) return 0;
    struct http_io_event *event = &scratch->event;
    __u64 cookie = bpf_get_socket_cookie(sk);
    struct http_connection *connection = bpf_map_lookup_elem(&connections, &cookie);
    struct user_data data = {};
    int readable = find_user_data(kind, &data) == 0;

    /* Copy the data of a call that starts a head, continues one, or — on a
     * connection known to carry HTTP — is short enough that a pipelined head
     * may follow a body's end inside it. */
    __u32 captured = 0;
    int starts = 0, capture = 0;
    __u8 pending = connection ? connection->head_pending[kind & 1] : 0;
    if (readable) {
        __u64 available = data.first_length < (__u64)length ? data.first_length : (__u64)length;
        captured = available < HTTP_CAPTURE_BYTES ? (__u32)available : HTTP_CAPTURE_BYTES;
        barrier_var(captured);
        if (captured > HTTP_CAPTURE_BYTES) captured = HTTP_CAPTURE_BYTES;
        __u32 probe = captured < 8 ? captured : 8;
        barrier_var(probe);
        if (probe > 8) probe = 8;
        if (probe > 0 && bpf_probe_read_user(scratch->data, probe, (void *)data.first) == 0)
            starts = starts_head(scratch->data, probe);
        capture = starts || pending || (connection && connection->carries_http && (__u32)length <= HTTP_CAPTURE_BYTES);
    } else {
        count(HTTP_UNREADABLE, 1);
    }
    if (!capture && !(connection && connection->carries_http)) {
        count(HTTP_CALLS_IGNORED, 1);
        return 0;
    }
    if (!capture) captured = 0;
    if (captured > 8 && bpf_probe_read_user(scratch->data, captured, (void *)data.first) != 0) {
        count(HTTP_UNREADABLE, 1);
        captured = 0;
    }

    __builtin_memset(event, 0, sizeof(*event));
    event->timestamp_ns = bpf_ktime_get_ns();
    event->cookie = cookie;
    event->pid = bpf_get_current_pid_tgid() >> 32;
    event->identity = workload->identity;
    event->length = (__u32)length;
    event->captured = (__u16)captured;
    event->kind = (__u8)kind;
    fill_addresses(sk, event);
    if (readable) read_tail(&data, (__u32)length, event);

    /* A head that does not end in this call (no blank line at its end and
     * not longer than the capture) continues in the next calls. */
    struct http_connection state = {};
    if (connection) __builtin_memcpy(&state, connection, sizeof(state));
    state.carries_http = 1;
    if (captured > 0) {
        if (starts || pending) {
            int ends_head = event->tail_length >= 4 && event->tail[event->tail_length - 4 & 7] == '\r'
                && event->tail[event->tail_length - 3 & 7] == '\n' && event->tail[event->tail_length - 2 & 7] == '\r'
                && event->tail[event->tail_length - 1 & 7] == '\n';
            if (ends_head || (__u32)length > HTTP_CAPTURE_BYTES) state.head_pending[kind & 1] = 0;
            else state.head_pending[kind & 1] = starts ? HEAD_CONTINUATION_CALLS : pending - 1;
        }
        count(HTTP_CALLS_CAPTURED, 1);
    } else {
        count(HTTP_CALLS_COUNTED, 1);
    }
    if (!connection || __builtin_memcmp(&state, connection, sizeof(state)) != 0)
        bpf_map_update_elem(&connections, &cookie, &state, BPF_ANY);
    submit(scratch, captured);
    return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send, struct sock *sk, int length, int flags) {
    return observe(sk, length, flags, HTTP_IO_SEND);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_receive, struct sock *sk, int length, int flags) {
    return observe(sk, length, flags, HTTP_IO_RECEIVE);
}

/* A connection that carried HTTP closes: tell the reader (a response that
 * ends at close ends here) and forget it. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state_change, struct sock *sk, int old_state, int new_state) {
    if (new_state != TCP_CLOSE) return 0;
    __u64 cookie = bpf_get_socket_cookie(sk);
    struct http_connection *connection = bpf_map_lookup_elem(&connections, &cookie);
    if (!connection) return 0;
    __u32 zero = 0;
    struct scratch *scratch = bpf_map_lookup_elem(&scratch_space, &zero);
    if (scratch) {
        struct http_io_event *event = &scratch->event;
        __builtin_memset(event, 0, sizeof(*event));
        event->timestamp_ns = bpf_ktime_get_ns();
        event->cookie = cookie;
        event->kind = HTTP_IO_CLOSE;
        fill_addresses(sk, event);
        submit(scratch, 0);
    }
    count(HTTP_CLOSES, 1);
    bpf_map_delete_elem(&connections, &cookie);
    return 0;
}
