#!/usr/bin/env bash
# Prepares this machine for building and testing swift-bpf-mesh: installs the
# Debian packages that are missing and mounts bpffs and tracefs when they are
# not mounted. Safe to run again; does nothing when all is in place.
set -euo pipefail

packages=(
  libbpf-dev libelf-dev libcap-dev zlib1g-dev   # libbpf and what it links
  libssl-dev                                     # the benchmarks' HTTPS client (built with the tests)
  bpftool iproute2 libcap2-bin                   # bpftool, ip netns, capsh
  curl python3 haproxy openssl                   # real clients and peers in tests; openssl makes test certificates
  prometheus                                     # promtool checks the metrics exposition
)
# `setup.sh bench`: what the benchmarks compare against, too.
if [ "${1:-}" = "bench" ]; then
  packages+=(nginx-light libnginx-mod-stream)    # nginx as the proxy hop (http and stream)
  packages+=(valgrind bc)                        # instructions per request (Benchmarks/proxy-instructions.sh); bc for the scripts' ratios
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Tests start their own HAProxy; the packaged services are not wanted.
  if command -v systemctl >/dev/null; then systemctl disable --now haproxy prometheus nginx >/dev/null 2>&1 || true; fi
  # Without systemd, the packages' own start scripts may have started them: stop those too.
  for service in haproxy prometheus nginx; do
    if command -v service >/dev/null; then service "$service" stop >/dev/null 2>&1 || true; fi
  done
fi

if [ "$(id -u)" -eq 0 ]; then
  if ! mountpoint -q /sys/fs/bpf; then
    echo "setup: mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
  fi
  if ! mountpoint -q /sys/kernel/tracing; then
    echo "setup: mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing || echo "setup: tracefs unavailable (tracepoint programs will report it)"
  fi
else
  echo "setup: not root; bpffs and tracefs are left as they are (kernel tests will skip locally)"
fi
