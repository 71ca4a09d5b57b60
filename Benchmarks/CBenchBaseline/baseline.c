#define _GNU_SOURCE
#include <sched.h>
#include "CBenchBaseline.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

uint64_t baseline_hash_lookups(int map_fd, uint32_t keys, uint64_t iterations) {
    uint64_t found = 0, value;
    for (uint64_t i = 0; i < iterations; i++) {
        uint32_t key = (uint32_t)(i % keys);
        if (bpf_map_lookup_elem(map_fd, &key, &value) == 0) found += value & 1;
    }
    return found;
}

uint64_t baseline_hash_updates(int map_fd, uint32_t keys, uint64_t iterations) {
    uint64_t failures = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        uint32_t key = (uint32_t)(i % keys);
        uint64_t value = i;
        if (bpf_map_update_elem(map_fd, &key, &value, BPF_ANY) != 0) failures++;
    }
    return failures;
}

static int count_record(void *context, void *data, size_t size) {
    (void)data;
    (void)size;
    (*(int64_t *)context)++;
    return 0;
}

int64_t baseline_ringbuf_drain(int map_fd) {
    int64_t count = 0;
    struct ring_buffer *ring = ring_buffer__new(map_fd, count_record, &count, NULL);
    if (!ring) return -1;
    ring_buffer__consume(ring);
    ring_buffer__free(ring);
    return count;
}


int bench_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

/* MARK: HTTP peers for the telemetry benchmark */

#include <pthread.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>
#include <errno.h>
#include <time.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

static const char http_response[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
static const char minimal_request[] = "GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n";
static const char browser_request[] =
    "GET /bench/items?id=42&view=full HTTP/1.1\r\n"
    "Host: bench.example\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=1\r\n"
    "X-Request-Id: 7f3c2a1e-9b4d-4c6a-8e2f-1a2b3c4d5e6f\r\n"
    "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    "Cache-Control: no-cache\r\n"
    "\r\n";
static const char *http_request = minimal_request;
static size_t http_request_length = sizeof(minimal_request) - 1;

void bench_http_use_browser_request(int browser) {
    http_request = browser ? browser_request : minimal_request;
    http_request_length = browser ? sizeof(browser_request) - 1 : sizeof(minimal_request) - 1;
}

static uint64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* The TLS the clients speak from now on (bench_http_use_tls); NULL: plaintext. */
static SSL_CTX *tls_context;
static char tls_server_name[256];

int bench_http_use_tls(const char *server_name, const char *ca_path) {
    if (tls_context) { SSL_CTX_free(tls_context); tls_context = NULL; }
    if (!server_name) return 0;
    if (strlen(server_name) >= sizeof(tls_server_name)) return -EINVAL;
    SSL_CTX *context = SSL_CTX_new(TLS_client_method());
    if (!context) return -ENOMEM;
    /* One protocol and one cipher suite, whatever the server prefers: every proxy does the same work a record. */
    if (SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(context, "TLS_AES_128_GCM_SHA256") != 1 ||
        SSL_CTX_load_verify_locations(context, ca_path, NULL) != 1) {
        ERR_print_errors_fp(stderr);   /* (the cause: OpenSSL's own queue, e.g. a CA file it cannot read) */
        SSL_CTX_free(context);
        return -EINVAL;
    }
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    strcpy(tls_server_name, server_name);
    tls_context = context;
    return 0;
}

/* A client's connection: a socket, and its TLS session when the clients speak TLS. */
struct client_connection {
    int fd;
    SSL *tls;
};

static void client_close(struct client_connection *connection) {
    if (connection->tls) SSL_free(connection->tls);
    close(connection->fd);
}

/* A TCP connection to 127.0.0.1:port, without Nagle; the socket or -errno. */
static int connect_loopback(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) { close(fd); return -errno; }
    return fd;
}

/* Connects to 127.0.0.1:port, with the TLS handshake (server name and
 * certificate checked) when the clients speak TLS; 0 or -errno. */
static int client_connect(uint16_t port, struct client_connection *connection) {
    *connection = (struct client_connection){.fd = connect_loopback(port), .tls = NULL};
    if (connection->fd < 0) return connection->fd;
    if (!tls_context) return 0;
    connection->tls = SSL_new(tls_context);
    if (!connection->tls || SSL_set_fd(connection->tls, connection->fd) != 1 ||
        SSL_set_tlsext_host_name(connection->tls, tls_server_name) != 1 || SSL_set1_host(connection->tls, tls_server_name) != 1 ||
        SSL_connect(connection->tls) != 1) {
        ERR_print_errors_fp(stderr);   /* OpenSSL's reason, which -EPROTO does not carry */
        client_close(connection);
        return -EPROTO;
    }
    return 0;
}

static ssize_t client_write(struct client_connection *connection, const void *bytes, size_t count) {
    if (!connection->tls) return write(connection->fd, bytes, count);
    int written = SSL_write(connection->tls, bytes, (int)count);
    return written > 0 ? written : -1;
}

static ssize_t client_read(struct client_connection *connection, void *buffer, size_t capacity) {
    if (!connection->tls) return read(connection->fd, buffer, capacity);
    int got = SSL_read(connection->tls, buffer, (int)capacity);
    return got > 0 ? got : -1;
}

/* Reads until `count` complete messages ending in `terminator` (a head
 * without body, or the 2-byte body after a response head) have arrived. */
static int read_messages(struct client_connection *connection, const char *terminator, int count) {
    char buffer[4096];
    size_t matched = 0, length = strlen(terminator);
    while (count > 0) {
        ssize_t got = client_read(connection, buffer, sizeof(buffer));
        if (got <= 0) return -1;
        for (ssize_t i = 0; i < got; i++) {
            matched = buffer[i] == terminator[matched] ? matched + 1 : (buffer[i] == terminator[0] ? 1 : 0);
            if (matched == length) { count--; matched = 0; }
        }
    }
    return 0;
}

static void *serve_connection(void *argument) {
    int fd = (int)(intptr_t)argument;
    char buffer[4096];
    size_t matched = 0;
    for (;;) {
        ssize_t got = read(fd, buffer, sizeof(buffer));
        if (got <= 0) break;
        int heads = 0;
        for (ssize_t i = 0; i < got; i++) {
            static const char end[] = "\r\n\r\n";
            matched = buffer[i] == end[matched] ? matched + 1 : (buffer[i] == '\r' ? 1 : 0);
            if (matched == 4) { heads++; matched = 0; }
        }
        for (int i = 0; i < heads; i++)
            if (write(fd, http_response, sizeof(http_response) - 1) < 0) goto done;
    }
done:
    close(fd);
    return NULL;
}

int bench_http_server(uint16_t port) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 64) != 0) return -errno;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) return -errno;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pthread_t thread;
        pthread_create(&thread, NULL, serve_connection, (void *)(intptr_t)fd);
        pthread_detach(thread);
    }
}

struct fixed_rate_job {
    uint16_t port;
    uint64_t start, period, end;
    uint64_t *latencies;
    int64_t capacity, count;
    int error;
};

static void *fixed_rate_connection(void *argument) {
    struct fixed_rate_job *job = argument;
    struct client_connection connection;
    int result = client_connect(job->port, &connection);
    if (result < 0) { job->error = result; return NULL; }
    for (uint64_t scheduled = job->start; scheduled < job->end && job->count < job->capacity; scheduled += job->period) {
        uint64_t now = monotonic_ns();
        if (now < scheduled) {
            struct timespec pause = {.tv_sec = 0, .tv_nsec = (long)(scheduled - now)};
            nanosleep(&pause, NULL);
        }
        if (client_write(&connection, http_request, http_request_length) < 0 || read_messages(&connection, "\r\n\r\nok", 1) != 0) {
            job->error = -EIO;
            break;
        }
        job->latencies[job->count++] = monotonic_ns() - scheduled;
    }
    client_close(&connection);
    return NULL;
}

int64_t bench_http_fixed_rate(uint16_t port, int connections, int rate, int duration_ms, uint64_t *latencies, int64_t capacity) {
    if (connections < 1 || connections > 64 || rate < 1) return -EINVAL;
    struct fixed_rate_job jobs[64];
    pthread_t threads[64];
    uint64_t start = monotonic_ns() + (tls_context ? 200000000ull : 20000000ull);   /* 20 ms to connect (200 ms with TLS handshakes) */
    uint64_t period = 1000000000ull * (uint64_t)connections / (uint64_t)rate;
    for (int i = 0; i < connections; i++) {
        jobs[i] = (struct fixed_rate_job){
            .port = port, .start = start + period * (uint64_t)i / (uint64_t)connections, .period = period,
            .end = start + (uint64_t)duration_ms * 1000000ull,
            .latencies = latencies + capacity / connections * i, .capacity = capacity / connections,
        };
        pthread_create(&threads[i], NULL, fixed_rate_connection, &jobs[i]);
    }
    int64_t total = 0;
    int error = 0;
    for (int i = 0; i < connections; i++) {
        pthread_join(threads[i], NULL);
        if (jobs[i].error) error = jobs[i].error;
    }
    if (error) return error;
    /* Compact the per-connection slices. */
    for (int i = 0; i < connections; i++) {
        memmove(latencies + total, jobs[i].latencies, (size_t)jobs[i].count * sizeof(uint64_t));
        total += jobs[i].count;
    }
    return total;
}

int64_t bench_http_closed_loop(uint16_t port, int64_t count) {
    struct client_connection connection;
    int result = client_connect(port, &connection);
    if (result < 0) return result;
    uint64_t start = monotonic_ns();
    for (int64_t i = 0; i < count; i++) {
        if (client_write(&connection, http_request, http_request_length) < 0 || read_messages(&connection, "\r\n\r\nok", 1) != 0) {
            client_close(&connection);
            return -EIO;
        }
    }
    int64_t elapsed = (int64_t)(monotonic_ns() - start);
    client_close(&connection);
    return elapsed;
}
