#!/bin/bash
# Interleaved CPU-per-request loop: several mesh-proxy builds and HAProxy as the one hop,
# each in turn (order alternating by round) for 2-second rounds of `mesh-bench http-load`
# (10,000 requests/s over 4 keep-alive connections) against `mesh-bench http-server`.
# CPU is read from /proc/PID/stat; the ratios to HAProxy are per round, then the median.
#
#   bash Benchmarks/proxy-cpu-loop.sh ROUNDS http|tcp NAME=MESH_PROXY_BINARY...
#
# Needs a release mesh-bench (make bench builds it) and haproxy (scripts/setup.sh bench).
set -euo pipefail
rounds=$1 mode=$2; shift 2
bench=$(dirname "$0")/../.build/release/mesh-bench
scratch=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$scratch"; }
trap cleanup EXIT
$bench http-server 18880 >/dev/null 2>&1 & pids+=($!)
names=() ports=() port=18881 tenantMode=""
[ "$mode" = http ] && tenantMode=",mode=http"
for spec in "$@"; do
  "${spec#*=}" --tenant "t=127.0.0.1:$port,upstream=127.0.0.1:18880$tenantMode" >/dev/null 2>&1 & pids+=($!)
  names+=("${spec%%=*}"); ports+=($port); port=$((port + 1))
done
{ echo "defaults"; echo "    timeout connect 5s"; echo "    timeout client 60s"; echo "    timeout server 60s"
  echo "listen hop"; echo "    mode $mode"
  [ "$mode" = http ] && { echo "    option http-keep-alive"; echo "    http-reuse always"; }
  echo "    bind 127.0.0.1:$port"; echo "    server upstream 127.0.0.1:18880"; } > "$scratch/haproxy.cfg"
/usr/sbin/haproxy -db -f "$scratch/haproxy.cfg" >/dev/null 2>&1 & pids+=($!)
names+=(haproxy); ports+=($port)
processes=("${pids[@]:1}")
# Every hop answers before the first round.
for p in "${ports[@]}"; do timeout 10 bash -c "until $bench http-load $p 1 >/dev/null 2>&1; do sleep 0.2; done"; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq 1 "$rounds"); do
  order=$(seq 0 $((${#names[@]} - 1))); [ $((round % 2)) = 0 ] && order=$(echo "$order" | tac)
  for i in $order; do
    before=$(ticks "${processes[$i]}"); requests=$($bench http-load "${ports[$i]}" 2 | tail -1 | awk '{print $1}'); after=$(ticks "${processes[$i]}")
    echo "round $round ${names[$i]} $(echo "scale=2; ($after - $before) * 1000000 / $(getconf CLK_TCK) / $requests" | bc)"
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
