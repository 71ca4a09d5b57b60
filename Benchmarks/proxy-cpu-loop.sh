#!/bin/bash
# Interleaved CPU-per-request loop: several mesh-proxy builds, HAProxy and nginx as the one hop,
# each in turn (order alternating by round) for 2-second rounds of `mesh-bench http-load`
# (10,000 requests/s over 4 keep-alive connections) against `mesh-bench http-server`, and a round
# straight to the server among them. CPU is the processes' threads' schedstat; the latency added is a
# round's mean latency less that round's direct one. The ratios to HAProxy and to nginx (and of each
# build to the first build named) are per round, then the median, with a 95% bootstrap interval of it.
#
#   bash Benchmarks/proxy-cpu-loop.sh ROUNDS http|https|tcp NAME=MESH_PROXY_BINARY...
#
# In https mode every proxy terminates TLS 1.3 from the client (AES-128-GCM, one handshake a keep-alive
# connection) and speaks plain HTTP to the server; the direct rounds are plain HTTP, so the latency added
# includes the client's own TLS work, the same for every proxy.
#
# With the sockmap shortcut on every proxy's local legs (and the direct rounds'), run it as
#   .build/release/mesh-bench shortcut bash Benchmarks/proxy-cpu-loop.sh ROUNDS http|tcp NAME=...
# With HEADS=browser in the environment the client sends browser-like request heads (574 bytes, nine fields).
#
# Needs a release mesh-bench (make bench builds it), haproxy and nginx (scripts/setup.sh bench).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
rounds=$1 mode=$2; shift 2
proxy_bench_setup "$mode"
# (The direct rounds' CPU, the server's, is not compared.)
names=(direct) ports=(18880) processes=("$started") port=18881
for spec in "$@"; do
  start "${spec#*=}" --tenant "t=127.0.0.1:$port,upstream=127.0.0.1:18880$tenantMode"
  names+=("${spec%%=*}"); ports+=($port); processes+=($started); port=$((port + 1))
done
# HAProxy and nginx configured as the proxy benchmark configures them (both modes each; the loop uses $mode's port).
for baseline in haproxy nginx; do
  "$bench" proxy-config "$baseline" "$port" $((port + 1)) 127.0.0.1:18880 "$scratch" $tlsConfig > "$scratch/$baseline.conf"
  if [ "$baseline" = haproxy ]; then start /usr/sbin/haproxy -db -f "$scratch/haproxy.conf"
  else start /usr/sbin/nginx -c "$scratch/nginx.conf" -e stderr; fi
  names+=("$baseline"); ports+=($((port + modeOffset))); processes+=($started); port=$((port + 2))
done
wait_http "${ports[0]}"
wait_http "${ports[@]:1}" $clientTLS
for round in $(seq 1 "$rounds"); do
  for i in $(round_order "$round" "${!names[@]}"); do
    tls=$clientTLS; [ "$i" = 0 ] && tls=""   # (the direct rounds: plain HTTP)
    measure_round "${processes[$i]}" "${ports[$i]}" ${HEADS:+--$HEADS} $tls ||
      { echo "no requests answered through ${names[$i]} (port ${ports[$i]})" >&2; exit 1; }
    echo "round $round ${names[$i]} $cpuPerRequest $meanLatency"
  done
done | tee "$scratch/rounds"
python3 - "$scratch/rounds" <<'PY'
import random, sys, statistics
cpu, latency = {}, {}
for line in open(sys.argv[1]):
    _, r, name, value, mean = line.split()
    cpu.setdefault(name, {})[int(r)] = float(value)
    latency.setdefault(name, {})[int(r)] = float(mean)
cpu.pop("direct")
direct = latency.pop("direct")
added = {name: {r: rounds[r] - direct[r] for r in rounds} for name, rounds in latency.items()}
baselines = {"HAProxy": "haproxy", "nginx": "nginx"}
def interval(ratios):
    """A 95% bootstrap interval of the median of `ratios` (2,000 resamples, a fixed seed)."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return medians[50], medians[1949]
def compare(what, name, rounds, other, base):
    ratios = [rounds[r] / base[r] for r in rounds]
    low, high = interval(ratios)
    print(f"{name}: {what} / {other}'s, median {statistics.median(ratios):.3f}, 95% interval {low:.3f}-{high:.3f} (per round {' '.join(f'{x:.2f}' for x in ratios)})")
builds = [name for name in cpu if name not in baselines.values()]
for name in builds:
    for baseline, key in baselines.items():
        compare("CPU per request", name, cpu[name], baseline, cpu[key])
        compare("latency added", name, added[name], baseline, added[key])
# Builds against the first one named, round by round.
for name in builds[1:]:
    compare("CPU per request", name, cpu[name], builds[0], cpu[builds[0]])
    compare("latency added", name, added[name], builds[0], added[builds[0]])
for baseline, key in baselines.items():
    print(f"{baseline}: CPU per request median {statistics.median(cpu[key].values()):.1f} µs, latency added median {statistics.median(added[key].values()):.1f} µs")
print(f"direct: mean latency median {statistics.median(direct.values()):.1f} µs")
PY
