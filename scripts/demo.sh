#!/usr/bin/env bash
# Runs the demo (nginx-conf/demo.conf, Debian's nginx) and shows the health-check status page. Usage: demo.sh [stop]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$PWD/target/demo
conf=${DEMO_CONF:-$PWD/nginx-conf/demo.conf}
url=http://127.0.0.1:8080/upstream_status

stop_demo() {  # SIGQUIT the demo master (if running) and wait for it, bounded
  local pid
  pid=$(cat "$prefix/logs/nginx.pid" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -QUIT "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "demo: nginx $pid still running after 10 s; killing" >&2; kill -KILL "$pid"; }
    echo "demo: stopped nginx $pid" >&2
  fi
  rm -f "$prefix/logs/nginx.pid"
}
down_shown() { curl -fsS --max-time 2 "$url" 2>/dev/null | grep '127\.0\.0\.1:9083' | grep -qi 'down'; }

[[ ${1:-} == stop ]] && { stop_demo; exit 0; }
scripts/setup.sh
env_out=$(scripts/build.sh debian)  # (a failing build stops here; eval "$(...)" alone would hide it)
eval "$(grep '^NGX_HC_' <<<"$env_out")"
stop_demo
mkdir -p "$prefix"/{modules,logs,temp}
chmod 755 "$prefix" "$prefix"/{modules,logs,temp}
cp "$NGX_HC_MODULE" "$prefix/modules/ngx_http_upstream_healthcheck_module.so"
"$NGX_HC_NGINX" -p "$prefix/" -c "$conf" -e "$prefix/logs/error.log"
for _ in $(seq 150); do down_shown && break; sleep 0.2; done
if ! down_shown; then
  echo "demo: the status page did not show 127.0.0.1:9083 down within 30 s; error log tail:" >&2
  tail -n 20 "$prefix/logs/error.log" >&2
  curl -sS --max-time 2 "$url" >&2 || true
  stop_demo; exit 1
fi
curl -fsS --max-time 2 "$url"
echo
echo "status page: $url   (proxy: http://127.0.0.1:8080/)"
if [[ ! -t 0 || ${DEMO_ONCE:-} == 1 ]]; then stop_demo; exit 0; fi
trap 'stop_demo; exit 0' INT TERM
echo "demo running; Ctrl-C (or scripts/demo.sh stop) to stop"
pid=$(cat "$prefix/logs/nginx.pid")
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
