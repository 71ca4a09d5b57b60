#!/bin/bash
# Interleaved CPU-per-request loop: several mesh-proxy builds, HAProxy and nginx as the one hop,
# each in turn (order alternating by round) for 2-second rounds of `mesh-bench http-load`
# (10,000 requests/s over 4 keep-alive connections) against `mesh-bench http-server`.
# CPU is the processes' threads' schedstat; the ratios to HAProxy and to nginx (and of each build to the
# first build named) are per round, then the median.
#
#   bash Benchmarks/proxy-cpu-loop.sh ROUNDS http|tcp NAME=MESH_PROXY_BINARY...
#
# With HEADS=browser in the environment the client sends browser-like request heads (574 bytes, nine fields).
#
# Needs a release mesh-bench (make bench builds it), haproxy and nginx (scripts/setup.sh bench).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
rounds=$1 mode=$2; shift 2
proxy_bench_setup "$mode"
names=() ports=() processes=() port=18881
for spec in "$@"; do
  start "${spec#*=}" --tenant "t=127.0.0.1:$port,upstream=127.0.0.1:18880$tenantMode"
  names+=("${spec%%=*}"); ports+=($port); processes+=($started); port=$((port + 1))
done
# HAProxy and nginx configured as the proxy benchmark configures them (both modes each; the loop uses $mode's port).
for baseline in haproxy nginx; do
  "$bench" proxy-config "$baseline" "$port" $((port + 1)) 127.0.0.1:18880 "$scratch" > "$scratch/$baseline.conf"
  if [ "$baseline" = haproxy ]; then start /usr/sbin/haproxy -db -f "$scratch/haproxy.conf"
  else start /usr/sbin/nginx -c "$scratch/nginx.conf" -e stderr; fi
  names+=("$baseline"); ports+=($((port + modeOffset))); processes+=($started); port=$((port + 2))
done
wait_http "${ports[@]}"
for round in $(seq 1 "$rounds"); do
  for i in $(round_order "$round" "${!names[@]}"); do
    measure_round "${processes[$i]}" "${ports[$i]}" ${HEADS:+--$HEADS} ||
      { echo "no requests answered through ${names[$i]} (port ${ports[$i]})" >&2; exit 1; }
    echo "round $round ${names[$i]} $cpuPerRequest"
  done
done | tee "$scratch/rounds"
python3 - "$scratch/rounds" <<'PY'
import sys, statistics
cpu = {}
for line in open(sys.argv[1]):
    _, r, name, value = line.split()
    cpu.setdefault(name, {})[int(r)] = float(value)
baselines = {"HAProxy": cpu.pop("haproxy"), "nginx": cpu.pop("nginx")}
def compare(name, rounds, other, base):
    ratios = [rounds[r] / base[r] for r in rounds]
    print(f"{name}: CPU per request / {other}'s, median {statistics.median(ratios):.3f} (per round {' '.join(f'{x:.2f}' for x in ratios)})")
for name, rounds in cpu.items():
    for baseline, base in baselines.items():
        compare(name, rounds, baseline, base)
# Builds against the first one named, round by round.
first = next(iter(cpu), None)
for name, rounds in cpu.items():
    if name != first:
        compare(name, rounds, first, cpu[first])
for baseline, base in baselines.items():
    print(f"{baseline}: CPU per request median {statistics.median(base.values()):.1f} µs")
PY
