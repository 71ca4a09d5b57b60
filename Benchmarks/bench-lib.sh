# Shared by the benchmark scripts (sourced): the release mesh-bench, processes
# that end with the script, waiting for HTTP listeners, CPU time of processes and threads.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=${MESH_BENCH:-$root/.build/release/mesh-bench}   # (MESH_BENCH: another build, such as the tests' debug one)
[ -x "$bench" ] || { echo "$bench is missing: make bench builds it" >&2; exit 1; }
background=()

# Every process started with `start` ends with the script, however it ends.
end_background() { kill "${background[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap end_background EXIT

# start COMMAND...: runs it in the background, its output discarded; its pid is in $started.
start() { "$@" >/dev/null 2>&1 & started=$!; background+=("$started"); }

# wait_http PORT...: until each port answers an HTTP request (mesh-bench's own wait; it names a port that never does).
wait_http() { "$bench" wait-http "$@" >/dev/null; }

# process_cpu_ns PID: the CPU time all its threads have used, in nanoseconds.
process_cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ n += $1 } END { printf "%.0f\n", n }'; }

# process_tree_cpu_ns PID: the same for the process and its children (nginx's workers).
process_tree_cpu_ns() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1"); do total=$((total + $(process_cpu_ns "$pid"))); done
  echo "$total"
}

# measure_round PID PORT [HTTP-LOAD OPTIONS...]: one 2-second `mesh-bench http-load` round (10,000 requests/s
# over 4 keep-alive connections) through the proxy PID listening on PORT; sets $requests (answered),
# $meanLatency (µs) and $cpuPerRequest (µs: the process's and its children's CPU time over the requests).
# Fails when nothing was answered.
measure_round() {
  local pid=$1 port=$2 before after result; shift 2
  before=$(process_tree_cpu_ns "$pid")
  result=$("$bench" http-load "$port" 2 "$@" | tail -1) || return 1
  after=$(process_tree_cpu_ns "$pid")
  requests=$(awk '{print $1}' <<< "$result") meanLatency=$(awk '{print $5}' <<< "$result")
  cpuPerRequest=$(echo "scale=2; ($after - $before) / 1000 / $requests" | bc)
}

# thread_cpu_ns PID NAME: the CPU time of its threads named NAME (a tenant's event-loop thread and its
# splice loop's share the name), in nanoseconds.
thread_cpu_ns() {
  local total=0 found=0 task
  for task in /proc/"$1"/task/*; do
    if [ "$(cat "$task/comm")" = "$2" ]; then total=$((total + $(awk '{ print $1 }' "$task/schedstat"))); found=1; fi
  done
  [ "$found" = 1 ] || { echo "no thread $2 in process $1" >&2; return 1; }
  echo "$total"
}

# proxy_bench_setup MODE: what the proxy scripts share: $scratch (a folder removed at the end), the C
# server on port 18880, and for MODE (http, https or tcp) $tenantMode (mesh-proxy's --tenant suffix),
# $modeOffset (HAProxy's and nginx's listener for MODE is the first of their two ports plus it) and
# $tlsConfig (proxy-config's certificate arguments) and $clientTLS (http-load's and wait-http's --tls
# option), both empty but for https: then every proxy terminates TLS 1.3 with one self-signed ECDSA P-256
# certificate for bench.mesh.local, made here, and the client trusts it.
proxy_bench_setup() {
  for program in /usr/sbin/haproxy /usr/sbin/nginx; do
    [ -x "$program" ] || { echo "$program is missing: run 'bash scripts/setup.sh bench' (as root)" >&2; exit 1; }
  done
  case "$1" in http|https|tcp) ;; *) echo "mode '$1': http, https or tcp" >&2; exit 1 ;; esac
  scratch=$(mktemp -d)
  trap 'end_background; rm -rf "$scratch"' EXIT
  start "$bench" http-server 18880
  tenantMode="" modeOffset=0 tlsConfig="" clientTLS=""
  if [ "$1" = http ] || [ "$1" = https ]; then tenantMode=",mode=http" modeOffset=1; fi
  if [ "$1" = https ]; then
    # (HAProxy reads the key from the file named as the chain with .key added.)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.mesh.local \
      -addext subjectAltName=DNS:bench.mesh.local -keyout "$scratch/tls.pem.key" -out "$scratch/tls.pem" 2>"$scratch/openssl.log" \
      || { cat "$scratch/openssl.log" >&2; exit 1; }
    tenantMode+=",cert=$scratch/tls.pem,key=$scratch/tls.pem.key"
    tlsConfig="$scratch/tls.pem $scratch/tls.pem.key" clientTLS="--tls bench.mesh.local $scratch/tls.pem"
  fi
}

# round_order ROUND ITEM...: the items, reversed on even rounds (interleaving without a fixed first).
round_order() { local round=$1; shift; if [ $((round % 2)) = 0 ]; then printf '%s\n' "$@" | tac; else printf '%s\n' "$@"; fi; }
