#!/bin/bash
# A quiet tenant's latency beside a neighbour flooding the proxy's CPU, at equal weights: mesh-proxy
# builds in interleaved rounds. The proxy is confined to CPU 0; its peers to CPU 1: the C server
# (one for each tenant), the quiet tenant's client (Benchmarks/quiet-client.py: one keep-alive
# connection, a request every 2 ms or so, 1,000 measured after 150 unmeasured, at nice -10) and the
# flood's three `mesh-bench http-load` clients (10,000 requests/s each over 4 connections, at nice
# 19: the proxy's CPU is what is contended). Each round measures the quiet tenant alone, then beside
# the flood; `p99-all` includes the first 150 requests beside it (the proxy's reaction), and the
# noisy tenant's thread's share of CPU 0 while the quiet one was measured beside it.
#
#   bash Benchmarks/quiet-tenant-p99.sh ROUNDS NAME=MESH_PROXY_BINARY...
#
# With KDAMOND_AWAY=1 the kernel's DAMON threads (kdamond.*, which run for milliseconds without
# preemption on this VM's kernel) are confined to CPU 1 for the run and given back their CPUs after:
# their stalls then fall on CPU 1, where the quiet client and the servers run, instead of on the proxy.
#
# Needs a release mesh-bench and mesh-proxy (make bench builds both), and root: for nice -10, and for
# the proxy to demote (CAP_SYS_NICE).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
[ "$(id -u)" = 0 ] || { echo "run as root: the quiet client runs at nice -10, and the proxy demotes only with CAP_SYS_NICE" >&2; exit 1; }
rounds=$1; shift
client=$root/Benchmarks/quiet-client.py
if [ "${KDAMOND_AWAY:-0}" = 1 ]; then
  moved=()
  # (Set before any thread moves: a failure part way still gives back those moved.)
  trap 'for m in "${moved[@]}"; do taskset -pc "${m#*:}" "${m%%:*}" >/dev/null || true; done; end_background' EXIT
  for pid in $(pgrep '^kdamond'); do
    moved+=("$pid:$(taskset -pc "$pid" | awk '{print $NF}')")
    taskset -pc 1 "$pid" >/dev/null
  done
fi
start taskset -c 1 nice -n -10 "$bench" http-server 18970
start taskset -c 1 "$bench" http-server 18971
wait_http 18970 18971
quiet() { taskset -c 1 nice -n -10 python3 "$client" 18972 1150 0.002 150; }
for round in $(seq 1 "$rounds"); do
  for spec in $(round_order "$round" "$@"); do
    name=${spec%%=*}
    start taskset -c 0 "${spec#*=}" --tenant "quiet=127.0.0.1:18972,upstream=127.0.0.1:18970,mode=http" \
      --tenant "noisy=127.0.0.1:18973,upstream=127.0.0.1:18971,mode=http"
    proxy=$started
    wait_http 18972 18973
    alone=$(quiet)
    floods=()
    # (Longer than the measuring takes; ended after it.)
    for i in 1 2 3; do start taskset -c 1 nice -n 19 "$bench" http-load 18973 30; floods+=($started); done
    sleep 1   # the flood under way
    cpu0=$(thread_cpu_ns "$proxy" mesh:noisy); t0=$(date +%s%N)
    beside=$(quiet)
    cpu1=$(thread_cpu_ns "$proxy" mesh:noisy); t1=$(date +%s%N)
    kill "${floods[@]}" 2>/dev/null || true; wait "${floods[@]}" 2>/dev/null || true
    kill "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true
    echo "round $round $name alone: $alone | beside the flood: $beside | noisy tenant's thread: $(( (cpu1 - cpu0) * 100 / (t1 - t0) ))% of CPU 0"
  done
done
