#!/bin/bash
# Interleaved CPU-per-request loop: several mesh-proxy builds and HAProxy as the one hop,
# each in turn (order alternating by round) for 2-second rounds of `mesh-bench http-load`
# (10,000 requests/s over 4 keep-alive connections) against `mesh-bench http-server`.
# CPU is the process's threads' schedstat; the ratios to HAProxy are per round, then the median.
#
#   bash Benchmarks/proxy-cpu-loop.sh ROUNDS http|tcp NAME=MESH_PROXY_BINARY...
#
# Needs a release mesh-bench (make bench builds it) and haproxy (scripts/setup.sh bench).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
rounds=$1 mode=$2; shift 2
scratch=$(mktemp -d)
trap 'end_background; rm -rf "$scratch"' EXIT
start "$bench" http-server 18880
names=() ports=() processes=() port=18881 tenantMode=""
[ "$mode" = http ] && tenantMode=",mode=http"
for spec in "$@"; do
  start "${spec#*=}" --tenant "t=127.0.0.1:$port,upstream=127.0.0.1:18880$tenantMode"
  names+=("${spec%%=*}"); ports+=($port); processes+=($started); port=$((port + 1))
done
{ echo "defaults"; echo "    timeout connect 5s"; echo "    timeout client 60s"; echo "    timeout server 60s"
  echo "listen hop"; echo "    mode $mode"
  if [ "$mode" = http ]; then echo "    option http-keep-alive"; echo "    http-reuse always"; fi
  echo "    bind 127.0.0.1:$port"; echo "    server upstream 127.0.0.1:18880"; } > "$scratch/haproxy.cfg"
start /usr/sbin/haproxy -db -f "$scratch/haproxy.cfg"
names+=(haproxy); ports+=($port); processes+=($started)
wait_http "${ports[@]}"
for round in $(seq 1 "$rounds"); do
  for i in $(round_order "$round" "${!names[@]}"); do
    before=$(process_cpu_ns "${processes[$i]}")
    requests=$("$bench" http-load "${ports[$i]}" 2 | tail -1 | awk '{print $1}')
    after=$(process_cpu_ns "${processes[$i]}")
    echo "round $round ${names[$i]} $(echo "scale=2; ($after - $before) / 1000 / $requests" | bc)"
  done
done | tee "$scratch/rounds"
python3 - "$scratch/rounds" <<'PY'
import sys, statistics
cpu = {}
for line in open(sys.argv[1]):
    _, r, name, value = line.split()
    cpu.setdefault(name, {})[int(r)] = float(value)
base = cpu.pop("haproxy")
for name, rounds in cpu.items():
    ratios = [rounds[r] / base[r] for r in rounds]
    print(f"{name}: CPU per request / HAProxy's, median {statistics.median(ratios):.3f} (per round {' '.join(f'{x:.2f}' for x in ratios)})")
print(f"HAProxy: CPU per request median {statistics.median(base.values()):.1f} µs")
PY
