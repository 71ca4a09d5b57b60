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
// HTTPS is seen in plaintext at the TLS library (uprobes on OpenSSL's
// SSL_read/SSL_write and their _ex forms), as Beyla and Pixie do; the raw
// calls of such a connection carry only ciphertext and are skipped.
//
// x86_64 system call numbers; other architectures are refused by the Swift side.
#include "syscall_registers.h"
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

#define SOCK_STREAM 1
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

/* Per connection end, kept in the socket itself: found without a hash
 * lookup, never evicted, freed with the socket. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct http_connection);
} connections SEC(".maps");

/* The same for the plaintext of TLS connections, by socket cookie: a TLS
 * library call has no socket at hand. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);              /* socket cookie */
    __type(value, struct http_connection);
} tls_connections SEC(".maps");

/* The range of watched cgroup ids. Every send and receive call of the
 * machine asks whether its cgroup is watched; a cgroup outside the range is
 * answered by two comparisons instead of a hash lookup (about 60 ns here).
 * Empty: lowest above highest. Widened before a workload enters the hash,
 * narrowed after one leaves it. */
volatile __u64 watched_lowest = ~0ULL;
volatile __u64 watched_highest;

/* An LRU: a thread that dies inside a library call never removes its entry. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);              /* pid_tgid */
    __type(value, struct tls_call);
} tls_calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct tls_object);
    __type(value, struct tls_socket);
} tls_sockets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct http_counters);
} http_counters SEC(".maps");

/* Set from Swift once a TLS library is watched: until then no call looks
 * for a TLS call in progress. */
volatile __u32 tls_watched;

/* The identity of the workload of the current process's cgroup, if it is watched. */
static __always_inline int watched_identity(__u32 *identity) {
    __u64 cgroup = bpf_get_current_cgroup_id();
    if (cgroup < watched_lowest || cgroup > watched_highest) return 0;
    struct watched_workload *workload = bpf_map_lookup_elem(&watched_workloads, &cgroup);
    if (!workload) return 0;
    *identity = workload->identity;
    return 1;
}

/* An event under construction: header and captured data, per CPU. */
struct scratch {
    struct http_io_event event;
    __u8 data[HTTP_CAPTURE_BYTES];
    __u64 submitted;   /* events this CPU sent (after the data: never copied out) */
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
} scratch_space SEC(".maps");

/* This CPU's counters. The send and receive programs run in process
 * context and update them without atomics; the close program, which can
 * interrupt them from softirq, adds atomically (COUNT_ATOMIC). */
static __always_inline struct http_counters *counters(void) {
    __u32 zero = 0;
    return bpf_map_lookup_elem(&http_counters, &zero);
}

#define COUNT(counters, index, delta) do { if (counters) (counters)->values[index] += (delta); } while (0)
#define COUNT_ATOMIC(counters, index, delta) do { if (counters) __sync_fetch_and_add(&(counters)->values[index], (delta)); } while (0)

/* Where the current system call's data is: the first buffer, its length,
 * and the iovec array (for the tail), if any. */
struct user_data {
    __u64 first;
    __u64 first_length;
    __u64 iov;
    __u64 iov_count;
};

static __always_inline int find_user_data(int kind, struct user_data *data) {
    struct pt_regs *regs = syscall_registers();
    if (!regs) return -1;
    /* A trusted pointer: direct loads, relocated by CO-RE, no helper calls. */
    __u64 number = regs->orig_ax, arg1 = regs->si, arg2 = regs->dx;
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
    if (length >= 4) {
        /* The common case: the first four bytes, as one little-endian word,
         * against each token's first four ("HTTP" stands for "HTTP/1."). */
        __u32 word = bytes[0] | (__u32)bytes[1] << 8 | (__u32)bytes[2] << 16 | (__u32)bytes[3] << 24;
#define WORD(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)
        switch (word) {
        case WORD('G', 'E', 'T', ' '): case WORD('P', 'O', 'S', 'T'): case WORD('P', 'U', 'T', ' '):
        case WORD('H', 'E', 'A', 'D'): case WORD('H', 'T', 'T', 'P'): case WORD('D', 'E', 'L', 'E'):
        case WORD('P', 'A', 'T', 'C'): case WORD('O', 'P', 'T', 'I'): case WORD('C', 'O', 'N', 'N'):
        case WORD('T', 'R', 'A', 'C'):
            return 1;
        default:
            return 0;
        }
#undef WORD
    }
    /* A call shorter than that: a prefix of a token. */
#define MATCHES(text) ({                                                   \
        const char *__t = text; int __ok = 1;                              \
        for (int __i = 0; __i < 4; __i++) {                                \
            if (__i >= (int)length) break;                                 \
            if (bytes[__i] != (__u8)__t[__i]) { __ok = 0; break; }         \
        }                                                                  \
        __ok; })
    return MATCHES("GET ") || MATCHES("POST") || MATCHES("PUT ") || MATCHES("HEAD") || MATCHES("HTTP")
        || MATCHES("DELE") || MATCHES("PATC") || MATCHES("OPTI") || MATCHES("CONN") || MATCHES("TRAC");
#undef MATCHES
}

/* The tracepoints' socket is a trusted pointer: direct loads, no helper calls. */
static __always_inline void read_endpoints(struct sock *sk, struct connection_endpoints *ends) {
    __u16 family = sk->__sk_common.skc_family;
    ends->family = family;
    ends->reserved = 0;
    ends->local_port = sk->__sk_common.skc_num;
    ends->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
    if (family == AF_INET) {
        MESH_MAP_V4(ends->local_address, sk->__sk_common.skc_rcv_saddr);
        MESH_MAP_V4(ends->remote_address, sk->__sk_common.skc_daddr);
    } else {
        for (int i = 0; i < 4; i++) {
            ends->local_address[i] = sk->__sk_common.skc_v6_rcv_saddr.words[i];
            ends->remote_address[i] = sk->__sk_common.skc_v6_daddr.words[i];
        }
    }
}

static __always_inline void copy_endpoints(const struct connection_endpoints *ends, struct http_io_event *event) {
    __builtin_memcpy(event->local_address, ends->local_address, sizeof(event->local_address));
    __builtin_memcpy(event->remote_address, ends->remote_address, sizeof(event->remote_address));
    event->local_port = ends->local_port;
    event->remote_port = ends->remote_port;
    event->family = ends->family;
}

static __always_inline void submit(struct scratch *scratch, __u32 captured, struct http_counters *tally) {
    __u64 size = sizeof(struct http_io_event) + captured;
    if (size > sizeof(struct http_io_event) + HTTP_CAPTURE_BYTES) return;
    /* Whether to wake the reader: asked of the ring on every 32nd event of this CPU only. */
    __u64 flags = BPF_RB_NO_WAKEUP;
    if ((++scratch->submitted & 31) == 0 && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_THRESHOLD) flags = BPF_RB_FORCE_WAKEUP;
    if (bpf_ringbuf_output(&events, scratch, size, flags) != 0) COUNT(tally, HTTP_EVENTS_LOST, 1);
}

/* Records that a connection end carries HTTP and, when `head_changes`, how
 * many more calls in its direction continue a head (`next`). Only the fields
 * that change are written: a send and a receive on one socket can run at
 * once. A raw socket keeps its state in the socket itself (made on first
 * need); TLS plaintext keeps it by cookie, written by update, never in place
 * (an LRU element can be reused for another cookie right after eviction). */
static __always_inline void update_connection(struct sock *sk, __u64 cookie, struct http_connection *connection, int sending,
                                              int head_changes, __u8 next, struct http_counters *tally) {
    if (sk) {
        if (!connection) connection = bpf_sk_storage_get(&connections, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!connection) {
            COUNT(tally, HTTP_STATE_LOST, 1);
            return;
        }
        if (!connection->carries_http) connection->carries_http = 1;
        if (!connection->cookie) connection->cookie = cookie;
        if (head_changes) {
            if (sending) connection->head_pending[0] = next;
            else connection->head_pending[1] = next;
        }
        return;
    }
    struct http_connection state = {};
    if (connection) __builtin_memcpy(&state, connection, sizeof(state));
    state.carries_http = 1;
    if (head_changes) {
        /* Both fields stored, values chosen: a chosen stack address would become a pointer `|`, which the verifier refuses. */
        state.head_pending[0] = sending ? next : state.head_pending[0];
        state.head_pending[1] = sending ? state.head_pending[1] : next;
    }
    if ((!connection || __builtin_memcmp(&state, connection, sizeof(state)) != 0)
        && bpf_map_update_elem(&tls_connections, &cookie, &state, BPF_ANY) != 0)
        COUNT(tally, HTTP_STATE_LOST, 1);
}

/* Reports one call of `length` bytes by process `pid`, reading its data
 * where `data` says; `connection`: its state, if it has one. The call is on
 * socket `sk`, whose cookie and endpoints are read only if the call is
 * reported — or, for the plaintext of a TLS library call (no socket), on the
 * connection `tls_cookie` at `tls_ends`. */
static __always_inline int report(struct sock *sk, __u64 tls_cookie, const struct connection_endpoints *tls_ends, __u32 pid,
                                  __u32 identity, int kind, int length, struct user_data *data, int readable,
                                  struct http_counters *tally, struct http_connection *connection) {
    __u32 zero = 0;
    struct scratch *scratch = bpf_map_lookup_elem(&scratch_space, &zero);
    if (!scratch) return 0;
    struct http_io_event *event = &scratch->event;

    /* Copy the data of a call that starts a head, continues one, or — on a
     * connection known to carry HTTP — is short enough that a pipelined head
     * may follow a body's end inside it. */
    __u32 captured = 0;
    int starts = 0, capture = 0;
    /* Two fields, not an index: clang turns `array[kind & 1]` on an aligned
     * stack address into a pointer `|`, which the verifier refuses. */
    __u8 pending = connection ? (kind == HTTP_IO_SEND ? connection->head_pending[0] : connection->head_pending[1]) : 0;
    if (readable) {
        __u64 available = data->first_length < (__u64)length ? data->first_length : (__u64)length;
        captured = available < HTTP_CAPTURE_BYTES ? (__u32)available : HTTP_CAPTURE_BYTES;
        barrier_var(captured);
        if (captured > HTTP_CAPTURE_BYTES) captured = HTTP_CAPTURE_BYTES;
        /* Whole short calls are read at once; of longer ones, the first 8
         * bytes decide whether the rest is worth copying. */
        int read_all = (__u32)length <= HTTP_CAPTURE_BYTES;
        __u32 probe = read_all ? captured : (captured < 8 ? captured : 8);
        barrier_var(probe);
        if (probe > HTTP_CAPTURE_BYTES) probe = HTTP_CAPTURE_BYTES;
        if (probe > 0 && bpf_probe_read_user(scratch->data, probe, (void *)data->first) == 0) {
            starts = starts_head(scratch->data, probe);
            capture = starts || pending || (connection && connection->carries_http && read_all);
            if (capture && probe < captured && bpf_probe_read_user(scratch->data, captured, (void *)data->first) != 0) {
                COUNT(tally, HTTP_UNREADABLE, 1);
                captured = 0;
            }
        } else {
            COUNT(tally, HTTP_UNREADABLE, 1);
        }
    } else {
        COUNT(tally, HTTP_UNREADABLE, 1);
    }
    if (!capture && !(connection && connection->carries_http)) {
        COUNT(tally, HTTP_CALLS_IGNORED, 1);
        return 0;
    }
    if (!capture) captured = 0;

    /* A raw socket's cookie is kept in its state after the first event:
     * the helper call costs about 45 ns here (`bpf_stats`), the load nothing. */
    __u64 cookie = !sk ? tls_cookie : connection && connection->cookie ? connection->cookie : bpf_get_socket_cookie(sk);
    __builtin_memset(event, 0, sizeof(*event));
    event->timestamp_ns = bpf_ktime_get_ns();
    event->cookie = cookie;
    event->pid = pid;
    event->identity = identity;
    event->length = (__u32)length;
    event->captured = (__u16)captured;
    event->kind = (__u8)kind;
    if (sk) {
        struct connection_endpoints ends;
        read_endpoints(sk, &ends);
        copy_endpoints(&ends, event);
    } else {
        copy_endpoints(tls_ends, event);
    }
    /* The last bytes are needed only where the data does not show them. */
    if (readable && captured < (__u32)length) read_tail(data, (__u32)length, event);
    else if (captured > 0) {
        __u32 take = captured < HTTP_TAIL_BYTES ? captured : HTTP_TAIL_BYTES;
        for (int i = 0; i < HTTP_TAIL_BYTES; i++) {
            if (i >= take) break;
            __u32 at = (captured - take + i) & (HTTP_CAPTURE_BYTES - 1);
            event->tail[i] = scratch->data[at];
        }
        event->tail_length = (__u8)take;
    }

    /* A head that does not end in this call (no blank line at its end and
     * not longer than the capture) continues in the next calls. */
    int head_changes = captured > 0 && (starts || pending);
    __u8 next = 0;
    if (head_changes) {
        int ends_head = event->tail_length >= 4 && event->tail[event->tail_length - 4 & 7] == '\r'
            && event->tail[event->tail_length - 3 & 7] == '\n' && event->tail[event->tail_length - 2 & 7] == '\r'
            && event->tail[event->tail_length - 1 & 7] == '\n';
        next = ends_head || (__u32)length > HTTP_CAPTURE_BYTES ? 0 : starts ? HEAD_CONTINUATION_CALLS : pending - 1;
    }
    COUNT(tally, captured > 0 ? HTTP_CALLS_CAPTURED : HTTP_CALLS_COUNTED, 1);
    if (!connection || !connection->carries_http || head_changes)
        update_connection(sk, cookie, connection, kind == HTTP_IO_SEND, head_changes, next, tally);
    submit(scratch, captured, tally);
    return 0;
}

static __always_inline int observe(struct sock *sk, int length, int flags, int kind) {
    if (length <= 0 || (kind == HTTP_IO_RECEIVE && (flags & MSG_PEEK))) return 0;
    if (sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM) return 0;
    __u32 identity;
    if (!watched_identity(&identity)) return 0;
    struct http_counters *tally = counters();
    COUNT(tally, HTTP_CALLS_WATCHED, 1);
    if (kind == HTTP_IO_SEND) COUNT(tally, HTTP_BYTES_SENT, length); else COUNT(tally, HTTP_BYTES_RECEIVED, length);

    /* Inside a TLS library call: these are records of ciphertext. Remember
     * which socket the SSL object writes to; its plaintext is reported when
     * the library call returns. */
    __u64 thread = bpf_get_current_pid_tgid();
    struct tls_call *call = tls_watched ? bpf_map_lookup_elem(&tls_calls, &thread) : 0;
    if (call) {
        struct tls_socket socket = {.cookie = bpf_get_socket_cookie(sk)};
        read_endpoints(sk, &socket.endpoints);
        struct tls_object object = {.ssl = call->ssl, .tgid = thread >> 32};
        bpf_map_update_elem(&tls_sockets, &object, &socket, BPF_ANY);
        /* Its other raw calls (alerts, renegotiation) are ciphertext too. */
        struct http_connection *marked = bpf_sk_storage_get(&connections, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!marked) COUNT(tally, HTTP_STATE_LOST, 1);
        else if (!marked->tls) marked->tls = 1;
        return 0;
    }
    struct http_connection *connection = bpf_sk_storage_get(&connections, sk, 0, 0);
    if (connection && connection->tls) return 0;

    struct user_data data = {};
    int readable = find_user_data(kind, &data) == 0;
    return report(sk, 0, 0, thread >> 32, identity, kind, length, &data, readable, tally, connection);
}

/* A TLS library call of a watched workload begins: remember its SSL object,
 * plaintext buffer and workload. */
static __always_inline int tls_enter(void *ssl, const void *buffer, void *length_out, __u32 kind) {
    __u32 identity;
    if (!watched_identity(&identity)) return 0;
    __u64 thread = bpf_get_current_pid_tgid();
    struct tls_call call = {.ssl = (__u64)ssl, .buffer = (__u64)buffer, .length_out = (__u64)length_out, .kind = kind,
                            .identity = identity};
    bpf_map_update_elem(&tls_calls, &thread, &call, BPF_ANY);
    return 0;
}

/* A TLS library call returns `result`: report its plaintext, `result` bytes
 * (SSL_read/SSL_write) or the count written to `length_out` (the _ex forms,
 * which return 1 on success). */
static __always_inline int tls_exit(long result, int extended) {
    __u64 thread = bpf_get_current_pid_tgid();
    struct tls_call *found = bpf_map_lookup_elem(&tls_calls, &thread);
    if (!found) return 0;
    struct tls_call call;
    __builtin_memcpy(&call, found, sizeof(call));
    bpf_map_delete_elem(&tls_calls, &thread);
    __u64 length = 0;
    if (extended) {
        if (result != 1 || !call.length_out || bpf_probe_read_user(&length, sizeof(length), (void *)call.length_out) != 0) return 0;
    } else {
        if (result <= 0) return 0;
        length = (__u64)result;
    }
    if (length == 0 || length > 0x7fffffff) return 0;
    struct tls_object object = {.ssl = call.ssl, .tgid = thread >> 32};
    struct tls_socket *socket = bpf_map_lookup_elem(&tls_sockets, &object);
    struct http_counters *tally = counters();
    if (!socket) {
        COUNT(tally, HTTP_TLS_UNMATCHED, 1);
        return 0;
    }
    struct tls_socket copy;
    __builtin_memcpy(&copy, socket, sizeof(copy));
    COUNT(tally, HTTP_TLS_CALLS, 1);
    struct user_data data = {.first = call.buffer, .first_length = length};
    return report(0, copy.cookie, &copy.endpoints, thread >> 32, call.identity, (int)call.kind, (int)length, &data, 1, tally,
                  bpf_map_lookup_elem(&tls_connections, &copy.cookie));
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_entry, void *ssl, const void *buffer, int length) { return tls_enter(ssl, buffer, 0, HTTP_IO_SEND); }

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_entry, void *ssl, const void *buffer, __u64 length, void *written) {
    return tls_enter(ssl, buffer, written, HTTP_IO_SEND);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_entry, void *ssl, void *buffer, int length) { return tls_enter(ssl, buffer, 0, HTTP_IO_RECEIVE); }

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_entry, void *ssl, void *buffer, __u64 length, void *read) {
    return tls_enter(ssl, buffer, read, HTTP_IO_RECEIVE);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_return, int result) { return tls_exit(result, 0); }

SEC("uretprobe")
int BPF_KRETPROBE(ssl_ex_return, int result) { return tls_exit(result, 1); }

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
    /* Its state is in the socket (for HTTPS, its plaintext's by cookie); a
     * socket that never carried HTTP has none, or none that carried HTTP. */
    struct http_connection *connection = bpf_sk_storage_get(&connections, sk, 0, 0);
    if (!connection) return 0;
    __u64 cookie = connection->cookie ? connection->cookie : bpf_get_socket_cookie(sk);
    int plain = connection->carries_http;
    int tls = connection->tls && bpf_map_delete_elem(&tls_connections, &cookie) == 0;
    bpf_sk_storage_delete(&connections, sk);
    if (!plain && !tls) return 0;
    /* Built on the stack: a close can come in softirq, in the middle of a
     * send or receive program on this CPU that is using the scratch space. */
    struct http_io_event event = {.timestamp_ns = bpf_ktime_get_ns(), .cookie = cookie, .kind = HTTP_IO_CLOSE};
    struct connection_endpoints ends;
    read_endpoints(sk, &ends);
    copy_endpoints(&ends, &event);
    struct http_counters *tally = counters();
    if (bpf_ringbuf_output(&events, &event, sizeof(event), BPF_RB_NO_WAKEUP) != 0) COUNT_ATOMIC(tally, HTTP_EVENTS_LOST, 1);
    COUNT_ATOMIC(tally, HTTP_CLOSES, 1);
    return 0;
}
