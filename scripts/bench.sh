#!/usr/bin/env bash
# Benchmark (not a test): builds the modules in release mode for Debian's nginx, runs the ten
# measurements (request path, probe cost, detection, errors during an outage, memory, duplicate
# probes, scale to 100,000 peers, traffic-aware checks, membership from etcd, stream probe cost)
# inside a network namespace of its own,
# prints a Markdown table
# and writes it to target/bench/results.md. Needs root and the packages of scripts/setup.sh.
# Usage: scripts/bench.sh [--quick] [--only 1,3,...] [--profile]
#   --quick    ~7-minute smoke run (shorter windows, fewer rounds); the full run takes ~31 minutes
#              (measurement 2 alone: ~2 and ~9 minutes; 7: ~2.5 and ~5.5; 8: ~0.6 and ~2.5; 9: ~0.7 and ~5)
#   --only     run only these measurements (numbers as in the table)
#   --profile  also record perf profiles of the workers at 10,000 and 100,000 peers (needs linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "bench: run as root (it creates a network namespace)" >&2; exit 1; }
for tool in wrk ip python3 /usr/sbin/nginx; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found: run scripts/setup.sh" >&2; exit 1; }
done

echo "bench: building the module (scripts/build.sh debian --release)" >&2
env_out=$(scripts/build.sh debian --release)
eval "$(grep '^NGX_HC_' <<<"$env_out")"
export NGX_HC_NGINX NGX_HC_MODULE NGX_HC_STREAM_MODULE NGX_HC_STREAM_BASE BENCH_WORK=$PWD/target/bench/work PYTHONDONTWRITEBYTECODE=1

ns=ngxhc-bench-$$
driver=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  # The driver stops what it started (nginx: SIGQUIT, then SIGKILL); give it time to.
  if [[ -n $driver ]] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$driver" 2>/dev/null || true
  fi
  # Whatever is still inside our namespace was started by this run: nginx gets SIGQUIT, the rest
  # SIGTERM, then SIGKILL.
  if ip netns list 2>/dev/null | grep -qw "$ns"; then
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      for pid in $pids; do
        if [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == nginx ]]; then kill -QUIT "$pid" 2>/dev/null || true
        else kill -TERM "$pid" 2>/dev/null || true; fi
      done
      sleep 3
      for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    ip netns del "$ns" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# A namespace of our own: its loopback routes all of 127.0.0.0/8 (up to 100,000 peer addresses
# served by one backend listening on 0.0.0.0), its routing rules are ours to change (measurement 7
# makes peer addresses unreachable), and its sysctls are ours to set: fresh upstream connections
# at thousands per second need TIME_WAIT reuse. The ephemeral range stays the default
# 32768-60999, above every port the benchmark listens on.
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="32768 60999" \
  net.core.somaxconn=8192
# 10,000 peers need more than 1,024 descriptors; raise the soft limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
start=$SECONDS
ip netns exec "$ns" python3 scripts/bench/bench.py "$@" &
driver=$!
wait "$driver"
echo "bench: finished in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s (without the build)" >&2
