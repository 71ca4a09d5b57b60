#!/bin/bash
# User-space instructions per request, counted by valgrind (callgrind): mesh-proxy builds, HAProxy and
# nginx as the one hop, each in turn under `valgrind --tool=callgrind` for a `mesh-bench http-load` run
# (the requests of SECONDS at 10,000 a second over 4 keep-alive connections: under valgrind a proxy
# answers far fewer a second, so they go back to back and the run lasts longer) against `mesh-bench
# http-server`, less an idle run of the same program as long as the loaded one (its start-up, its
# waiting and its periodic work). Unlike CPU time on this VM (single rounds
# of proxy-cpu-loop.sh vary by 10-40%), the count repeats to within a fraction of a percent, so a change
# of a few percent in a proxy's own work shows. It is user space only: the kernel's part of each proxy's
# CPU (70-85% here, about the same for the three) is not in it, and nor are instructions' costs.
#
#   bash Benchmarks/proxy-instructions.sh http|tcp SECONDS NAME=MESH_PROXY_BINARY...
#
# With HEADS=browser in the environment the client sends browser-like request heads (574 bytes, nine fields).
# Needs a release mesh-bench, haproxy, nginx and valgrind (scripts/setup.sh bench). Valgrind 3.19 cannot
# read the DWARF 5 debug information of Swift's binaries: each mesh-proxy runs as a stripped copy.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
mode=$1 seconds=$2; shift 2
# (Plain HTTP or TCP: this script's HAProxy, nginx and client do not speak TLS.)
case "$mode" in http|tcp) ;; *) echo "mode '$mode': http or tcp" >&2; exit 1 ;; esac
proxy_bench_setup "$mode"
"$bench" proxy-config haproxy 18882 18883 127.0.0.1:18880 "$scratch" > "$scratch/haproxy.conf"
# nginx in one process (no master and workers): under valgrind, callgrind wrote no count for nginx's
# workers (only the master's), so nginx serves from its master process here.
{ echo "master_process off;"; "$bench" proxy-config nginx 18882 18883 127.0.0.1:18880 "$scratch"; } > "$scratch/nginx.conf"
port=$((18882 + modeOffset))
commands=()
for spec in "$@"; do
  strip -o "$scratch/${spec%%=*}" "${spec#*=}"
  commands+=("${spec%%=*}|$scratch/${spec%%=*} --tenant t=127.0.0.1:$port,upstream=127.0.0.1:18880$tenantMode")
done
commands+=("HAProxy|/usr/sbin/haproxy -db -f $scratch/haproxy.conf" "nginx|/usr/sbin/nginx -c $scratch/nginx.conf -e stderr")
wait_http 18880
# stop PID: ends a program so that callgrind writes its count: SIGTERM, then SIGINT (HAProxy ends on
# the first, nginx under valgrind at times only on the second), 10 s for each.
stop() {
  for signal in TERM INT; do
    kill -"$signal" "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || { wait "$1" || true; return 0; }; sleep 0.1; done
  done
  echo "$1 did not end" >&2; return 1
}
# counted LOAD ARGUMENTS...: runs the program under callgrind, loaded (LOAD=1: the http-load run, timed)
# or idle (LOAD=0: as long as the last loaded run took, so that periodic work is counted alike), and
# sets $instructions (the program's and its child processes', in all) and $requests (answered).
counted() {
  local load=$1; shift
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$scratch/callgrind.%p" "$@" > "$scratch/valgrind.log" 2>&1 &
  local program=$!
  background+=("$program")
  # (Start-up under valgrind takes seconds: wait-http gives up after three, so it is asked again.)
  local tries=0
  until wait_http "$port" 2>/dev/null; do
    tries=$((tries + 1)); [ "$tries" -lt 10 ] || { echo "$* never answered on port $port under valgrind" >&2; exit 1; }
  done
  requests=0
  if [ "$load" = 1 ]; then
    local began; began=$(date +%s%N)
    requests=$("$bench" http-load "$port" "$seconds" ${HEADS:+--$HEADS} | tail -1 | awk '{print $1}')
    loadedNanoseconds=$(( $(date +%s%N) - began ))
  else
    sleep "$(echo "scale=3; $loadedNanoseconds / 1000000000" | bc)"
  fi
  stop "$program"
  rm -f "$scratch"/callgrind.*
  instructions=$(awk '/Collected :/ { n += $4 } END { if (n > 0) printf "%.0f", n }' "$scratch/valgrind.log")
  [ -n "$instructions" ] || { echo "valgrind counted nothing for $*:" >&2; cat "$scratch/valgrind.log" >&2; exit 1; }
}
declare -A result
for entry in "${commands[@]}"; do
  name=${entry%%|*}; read -r -a command <<< "${entry#*|}"
  counted 1 "${command[@]}"; loaded=$instructions answered=$requests
  counted 0 "${command[@]}"; idle=$instructions
  result[$name]=$(( (loaded - idle) / answered ))
  echo "$name: ${result[$name]} instructions per request in user space ($answered requests)"
done
for spec in "$@"; do
  name=${spec%%=*}
  echo "$name / HAProxy: $(echo "scale=2; ${result[$name]} / ${result[HAProxy]}" | bc); / nginx: $(echo "scale=2; ${result[$name]} / ${result[nginx]}" | bc)"
done
