#!/bin/bash
# L4 through a tenant's splice loop with each polling budget (mesh-proxy --splice-spin), beside HAProxy
# and nginx as the one hop: mean latency and CPU per request of each, in turn (order alternating by round)
# for 2-second rounds of `mesh-bench http-load` (10,000 requests/s over 4 keep-alive connections)
# against `mesh-bench http-server`. CPU is the process's (and nginx's workers') schedstat.
#
#   bash Benchmarks/splice-spin.sh ROUNDS MESH_PROXY_BINARY MICROSECONDS...
#
# Needs a release mesh-bench (make bench builds it), haproxy and nginx (scripts/setup.sh bench).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
rounds=$1 meshProxy=$2; shift 2
proxy_bench_setup tcp
"$bench" proxy-config haproxy 18882 18883 127.0.0.1:18880 "$scratch" > "$scratch/haproxy.conf"
"$bench" proxy-config nginx 18882 18883 127.0.0.1:18880 "$scratch" > "$scratch/nginx.conf"
wait_http 18880
declare -A latency cpu
for round in $(seq "$rounds"); do
  for variant in $(round_order "$round" HAProxy nginx "$@"); do
    case $variant in
      HAProxy) start /usr/sbin/haproxy -db -f "$scratch/haproxy.conf"; port=18882 ;;
      nginx) start /usr/sbin/nginx -c "$scratch/nginx.conf" -e stderr; port=18882 ;;
      *) start "$meshProxy" --splice-spin "$variant" --tenant t=127.0.0.1:18884,upstream=127.0.0.1:18880; port=18884 ;;
    esac
    pid=$started
    wait_http "$port"
    measure_round "$pid" "$port" || { echo "no requests answered through $variant (port $port)" >&2; exit 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    name=$variant; [[ $variant =~ ^[0-9]+$ ]] && name="spin ${variant} µs"
    printf 'round %d %-12s latency %6.1f µs, CPU %5.2f µs a request\n' "$round" "$name" "$meanLatency" "$cpuPerRequest"
    latency[$name]+="$meanLatency " cpu[$name]+="$cpuPerRequest "
  done
done
# median WORDS...: the middle value (the mean of the two middle ones for an even count).
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
for name in HAProxy nginx "$@"; do
  [[ $name =~ ^[0-9]+$ ]] && name="spin ${name} µs"
  printf '%-12s median latency %6.1f µs, CPU %5.2f µs a request\n' "$name" "$(median ${latency[$name]})" "$(median ${cpu[$name]})"
done
