#!/bin/bash
# Two HTTP tenants of one mesh-proxy flooding a CPU they share: how the proxy's CPU and the
# requests it serves divide between them, with weights 1:3 and, as the control, 1:1, in
# interleaved rounds. The proxy is confined to CPU 0; the C server and the fixed-rate clients
# (`mesh-bench http-load`, 3 per tenant unless told, 10,000 requests/s each, over 4 keep-alive
# connections, 4 s) to CPU 1, so the proxy's CPU is what is contended. Each round measures the
# middle 2 s: a thread's CPU time from /proc/PID/task/TID/schedstat (threads `mesh:light`,
# `mesh:heavy`), requests served from the proxy's mesh_proxy_http_requests_total.
#
#   bash Benchmarks/tenant-cpu-share.sh [ROUNDS [CLIENTS_PER_TENANT]]
#
# Needs a release mesh-bench and mesh-proxy (make bench builds both).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
rounds=${1:-5} loaders=${2:-3}
proxy=${MESH_PROXY_PROGRAM:-$root/.build/static/release/mesh-proxy}
[ -x "$proxy" ] || { echo "$proxy is missing: make bench builds it" >&2; exit 1; }
start taskset -c 1 "$bench" http-server 18960
declare -A proxies ports
base=18961
for weights in "1 3" "1 1"; do
  read -r light heavy <<<"$weights"
  start taskset -c 0 "$proxy" --metrics "127.0.0.1:$((base + 100))" \
        --tenant "light=127.0.0.1:$base,upstream=127.0.0.1:18960,mode=http,weight=$light" \
        --tenant "heavy=127.0.0.1:$((base + 1)),upstream=127.0.0.1:18960,mode=http,weight=$heavy"
  proxies["$light:$heavy"]=$started; ports["$light:$heavy"]=$base; base=$((base + 2))
done
for key in "${!ports[@]}"; do wait_http "${ports[$key]}" $((${ports[$key]} + 1)); done
served() {  # requests the proxy with metrics on port $1 answered for tenant $2
  curl -s "http://127.0.0.1:$1/metrics" | awk -v t="tenant=\"$2\"" 'index($0, "mesh_proxy_http_requests_total{") == 1 && index($0, t) { n += $NF } END { print n + 0 }'
}
for round in $(seq 1 "$rounds"); do
  for key in $(round_order "$round" 1:3 1:1); do
    pid=${proxies[$key]} port=${ports[$key]}
    clients=()
    for i in $(seq 1 "$loaders"); do
      for p in $port $((port + 1)); do start taskset -c 1 "$bench" http-load "$p" 4; clients+=($started); done
    done
    sleep 1   # the floods are under way: the window starts
    light0=$(thread_cpu_ns "$pid" mesh:light); heavy0=$(thread_cpu_ns "$pid" mesh:heavy)
    lightServed0=$(served $((port + 100)) light); heavyServed0=$(served $((port + 100)) heavy)
    sleep 2   # the measuring window
    light1=$(thread_cpu_ns "$pid" mesh:light); heavy1=$(thread_cpu_ns "$pid" mesh:heavy)
    lightServed=$(( $(served $((port + 100)) light) - lightServed0 )); heavyServed=$(( $(served $((port + 100)) heavy) - heavyServed0 ))
    wait "${clients[@]}"
    echo "round $round weights $key: CPU light $(( (light1 - light0) / 1000000 )) ms heavy $(( (heavy1 - heavy0) / 1000000 )) ms" \
         "(heavy/light $(echo "scale=2; ($heavy1 - $heavy0) / ($light1 - $light0)" | bc)); requests light $lightServed heavy $heavyServed" \
         "(heavy/light $(echo "scale=2; $heavyServed / $lightServed" | bc))"
  done
done
