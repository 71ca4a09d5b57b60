#include <stdint.h>
/// Raw libbpf baselines for mesh-bench: the same work as the Swift typed API, in C.
uint64_t baseline_hash_lookups(int map_fd, uint32_t keys, uint64_t iterations);
uint64_t baseline_hash_updates(int map_fd, uint32_t keys, uint64_t iterations);
/// Drains a ring buffer map with libbpf's ring_buffer__consume and a C callback; returns records.
int64_t baseline_ringbuf_drain(int map_fd);
/// Pins the calling thread, and threads it starts afterwards, to one CPU.
int bench_pin_to_cpu(int cpu);

/* HTTP/1.1 peers for the telemetry benchmark, in C so that the measured
 * cost is the kernel's and the capture's, not the peers'. */

/* Serves keep-alive HTTP/1.1 on 127.0.0.1:port forever, a thread per
 * connection: every request head gets "200 OK" with a 2-byte body. Returns
 * only on error (-errno). */
int bench_http_server(uint16_t port);

/* Sends requests over `connections` keep-alive connections at a fixed total
 * `rate` per second for `duration_ms` (open loop: each request has a
 * scheduled time, and its latency runs from that time to the end of its
 * response, so a stall is not hidden). Writes up to `capacity` latencies
 * (ns) to `latencies`; returns how many, or -errno. */
int64_t bench_http_fixed_rate(uint16_t port, int connections, int rate, int duration_ms, uint64_t *latencies, int64_t capacity);

/* The request head the HTTP clients send from now on: the default, a minimal
 * GET with a Host only (`browser` 0), or a browser-like GET of 574 bytes
 * with nine fields (`browser` 1). */
void bench_http_use_browser_request(int browser);

/* The clients speak TLS 1.3 (TLS_AES_128_GCM_SHA256 only) from now on, to
 * `server_name` (sent as SNI and checked against the certificate, which
 * must chain to the PEM file `ca_path`); NULL: plaintext again. Each
 * connection's handshake is made before its first request. 0 or -errno.
 * Not while a client runs: the clients' threads share its context. */
int bench_http_use_tls(const char *server_name, const char *ca_path);

/* One connection, `count` requests one after the other; returns the total
 * nanoseconds, or -errno. */
int64_t bench_http_closed_loop(uint16_t port, int64_t count);
