"""A quiet tenant's client: one keep-alive connection, `GET /` then a pause, N times.

    python3 quiet-client.py PORT REQUESTS PAUSE_SECONDS WARMUP

Prints the latency percentiles (µs) of the requests after the first WARMUP,
and the p99 of all of them.
"""
import socket
import sys
import time

port, count, pause, warmup = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
connection = socket.create_connection(("127.0.0.1", port))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = b"GET / HTTP/1.1\r\nHost: quiet\r\n\r\n"
latencies = []
for _ in range(count):
    started = time.perf_counter_ns()
    connection.sendall(request)
    received = b""
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            sys.exit("the connection closed before the answer ended")
        received += chunk
        end = received.find(b"\r\n\r\n")
        if end < 0:
            continue
        length = 0
        for line in received[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(received) >= end + 4 + length:
            break
    latencies.append((time.perf_counter_ns() - started) / 1000)
    time.sleep(pause)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


steady = latencies[warmup:]
print(f"p50 {percentile(steady, 0.5):.0f} p90 {percentile(steady, 0.9):.0f} p99 {percentile(steady, 0.99):.0f}"
      f" p99-all {percentile(latencies, 0.99):.0f}")
