#!/usr/bin/env bash
# Runs nginx + the module under valgrind memcheck (probes of up/down/hanging/garbage backends, every status format, the control API, reloads, a clean stop); fails on invalid accesses, uninitialised uses and leaks in the module. Usage: memcheck.sh [--short]
#
# nginx and the module are NGX_HC_NGINX / NGX_HC_MODULE when set (the current target of
# scripts/test.sh), else the vendored build (scripts/build.sh vendored). nginx runs with its
# master process, so valgrind follows the master and every worker (one log per process, with
# --keep-debuginfo so stacks in the module stay readable after it is unloaded). Findings:
# any invalid read/write/free, any use of uninitialised memory (nginx's own included), and any
# "definitely lost" block allocated from the module's code; nginx's own memory left at exit
# does not count. --short (for CI: 20-30 s here, well within 3 minutes) runs one worker and one
# reload; the full run (about 80 s) adds two workers, longer probing, origin tracking and
# reloads that change the peers and a check type. Logs go to target/memcheck/<target>-<mode>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=full
case ${1:-} in
  --short) mode=short ;;
  "") ;;
  *) echo "usage: $0 [--short]" >&2; exit 2 ;;
esac
for tool in valgrind python3 curl; do
  command -v "$tool" >/dev/null || { echo "memcheck: $tool not found (scripts/setup.sh installs it)" >&2; exit 1; }
done
if [[ -z ${NGX_HC_NGINX:-} || -z ${NGX_HC_MODULE:-} ]]; then
  env_out=$(scripts/build.sh vendored) || { echo "memcheck: build failed" >&2; exit 1; }
  eval "$(grep '^NGX_HC_' <<<"$env_out")"
  NGX_HC_TARGET=vendored
fi
nginx=$NGX_HC_NGINX module=$NGX_HC_MODULE
label=${NGX_HC_TARGET:-custom}-$mode
out=$root/target/memcheck/$label
prefix=$out/prefix
rm -rf "$out"
mkdir -p "$prefix/logs" "$prefix/temp" "$out/vg"
chmod 755 "$out" "$prefix" "$prefix/logs"
chmod 777 "$prefix/temp"   # workers run as nobody when the master is root
t0=$SECONDS
log() { printf '[memcheck %3ds] %s\n' $((SECONDS - t0)) "$*"; }
fail() { log "FAILED: $*"; echo "logs: $out" >&2; exit 1; }

if [[ $mode == short ]]; then
  workers=1 probe_secs=10 vg_extra=()
else
  workers=2 probe_secs=30 vg_extra=(--track-origins=yes)
fi

# ---- backends ---------------------------------------------------------------------------------
kinds=(up down hang garbage reset interim long refused)
python3 scripts/memcheck.py backends "$out/ports" "${kinds[@]}" &
backends_pid=$!
vg_pid=
cleanup() {
  local rc=$?
  if [[ -n $vg_pid ]] && kill -0 "$vg_pid" 2>/dev/null; then
    kill -TERM "$vg_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$vg_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$vg_pid" 2>/dev/null || true
    # Workers of this run's master, should they outlive it.
    for p in ${worker_pids_seen:-}; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  kill "$backends_pid" 2>/dev/null || true
  wait "$backends_pid" 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP
for _ in $(seq 100); do [[ -s $out/ports ]] && break; sleep 0.1; done
[[ -s $out/ports ]] || fail "backends did not start"
declare -A port
while read -r kind p; do port[$kind]=$p; done <"$out/ports"
addr() { echo "127.0.0.1:${port[$1]}"; }
front=$(python3 scripts/memcheck.py free-port)
# A fleet whose pages span several 64 KiB buffers, and a front with a small send buffer where
# a slow client makes the page pause and resume.
slow_front=$(python3 scripts/memcheck.py free-port)
fleet_servers=$(for i in $(seq 1500); do printf '        server 127.0.2.%d:%d down;\n' $((1 + i % 250)) $((10000 + i)); done)

# ---- configuration ----------------------------------------------------------------------------
# write_conf [EXTRA_PEERS_OF_APP [CHECK_TYPE_OF_TCP]]: the config, with changes for reloads.
write_conf() {
  local app_extra=${1:-} tcp_type=${2:-tcp}
  cat >"$prefix/nginx.conf" <<EOF
load_module $module;
worker_processes $workers;
error_log $prefix/error.log info;
pid $prefix/nginx.pid;
lock_file $prefix/nginx.lock;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $prefix/temp/client_body;
    proxy_temp_path $prefix/temp/proxy;
    fastcgi_temp_path $prefix/temp/fastcgi;
    uwsgi_temp_path $prefix/temp/uwsgi;
    scgi_temp_path $prefix/temp/scgi;
    upstream_healthcheck_ha_address 127.0.0.1 interval=1s;

    upstream app {
        server $(addr up);
        server $(addr down);
        server $(addr hang);
        server $(addr garbage);
        server $(addr reset);
        server $(addr interim);
        server $(addr long);
        server $(addr refused);
        server $(addr up) backup;
$app_extra
        upstream_healthcheck interval=400ms timeout=2s fall=1 rise=1 uri=/health;
    }
    upstream custom {
        server $(addr up);
        server $(addr down);
        server $(addr interim) down;
        upstream_healthcheck interval=500ms timeout=2s fall=2 rise=2 jitter=100ms default_down=on;
        upstream_healthcheck_request "GET /h HTTP/1.0\\r\\nHost: custom.test\\r\\n\\r\\n";
        upstream_healthcheck_valid_statuses 2xx 3xx !204;
    }
    upstream tcp {
        server $(addr up);
        server $(addr refused);
        upstream_healthcheck type=$tcp_type interval=500ms timeout=2s fall=1 rise=1;
    }
    upstream zoned {
        zone zoned 64k;
        least_conn;
        server $(addr up);
        server $(addr down);
        server $(addr refused);
        upstream_healthcheck interval=500ms timeout=2s fall=1 rise=1;
    }
    upstream plain {
        server $(addr up);
    }
    upstream fleet {
$fleet_servers
        upstream_healthcheck interval=3600s;
    }
    server {
        listen 127.0.0.1:$slow_front sndbuf=16k;
        location = /sp { upstream_healthcheck_status prometheus; }
    }
    server {
        listen 127.0.0.1:$front;
        location / { proxy_pass http://app; }
        location /z { proxy_pass http://zoned; }
        location /p { proxy_pass http://plain; }
        location = /st { upstream_healthcheck_status; }
        location = /sj { upstream_healthcheck_status json; }
        location = /sp { upstream_healthcheck_status prometheus; }
        location = /sh { upstream_healthcheck_status html; }
        location = /admin { client_body_buffer_size 1k; upstream_healthcheck_admin; }
    }
}
EOF
}
write_conf ""
"$nginx" -t -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" >"$out/nginx-t.log" 2>&1 \
  || { cat "$out/nginx-t.log" >&2; fail "nginx -t"; }

# ---- nginx under valgrind ---------------------------------------------------------------------
log "$mode run: $nginx with $module ($workers worker(s)), logs in $out"
valgrind --tool=memcheck --trace-children=yes --child-silent-after-fork=no \
  --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
  --keep-debuginfo=yes --num-callers=40 --error-limit=no --vgdb=no "${vg_extra[@]}" \
  ${MEMCHECK_VALGRIND_ARGS:-} \
  --log-file="$out/vg/vg.%p.log" \
  "$nginx" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g 'daemon off;' \
  >"$out/nginx.stdout" 2>&1 &
vg_pid=$!
worker_pids_seen=

# http METHOD PATH [CURL ARGS...]: prints the status code; the body goes to $out/last-body.
http() {
  local method=$1 path=$2; shift 2
  curl -s -o "$out/last-body" -w '%{http_code}' --max-time 60 -X "$method" "$@" \
    "http://127.0.0.1:$front$path" || echo 000
}
# expect CODE METHOD PATH [CURL ARGS...]
expect() {
  local want=$1 got; shift
  got=$(http "$@")
  [[ $got == "$want" ]] || fail "$* answered $got, expected $want: $(head -c 500 "$out/last-body")"
}
children() { ps -o pid= --ppid "$vg_pid" 2>/dev/null | tr -d ' ' | sort -n | tr '\n' ' '; }
# wait_for SECONDS WHAT CMD...: polls CMD every 0.5 s.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    kill -0 "$vg_pid" 2>/dev/null || fail "nginx exited while waiting for: $what"
    ((SECONDS < end)) || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.5
  done
}
status_has() { [[ $(http GET /st) == 200 ]] && grep -qF -- "$1" "$out/last-body"; }
all_verdicts() {
  status_has "$(addr up) up" && status_has "$(addr down) DOWN" && status_has "$(addr hang) DOWN" \
    && status_has "$(addr garbage) DOWN" && status_has "$(addr reset) DOWN" \
    && status_has "$(addr interim) up" && status_has "$(addr long) DOWN" \
    && status_has "$(addr refused) DOWN"
}
n_children() { local c; c=$(children); set -- $c; [[ $# -ge $workers ]]; }

wait_for 120 "nginx answering under valgrind" bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:$front/st) == 200 ]]"
wait_for 60 "$workers worker(s)" n_children
worker_pids_seen+=" $(children)"
log "nginx up (master $vg_pid, workers $(children))"
wait_for 90 "every verdict (up, DOWN by 503, timeout, garbage, reset, interim, long line, refused)" all_verdicts
log "verdicts reached"

# exercise: status pages in every format, with filters, errors and methods; the control API;
# proxied traffic. Run once per configuration generation.
exercise() {
  local up; up=$(addr up)
  expect 200 GET /st
  expect 200 GET /sj
  expect 200 GET /sp
  expect 200 GET /sh
  expect 200 GET "/st?format=json"
  expect 200 GET "/sj?upstream=app&status=down"
  expect 200 GET "/sp?upstream=tcp"
  expect 200 GET "/sh?refresh=5&status=up"
  expect 200 GET "/st?format=prometheus&upstream=zoned"
  expect 200 GET "/sj?x=%e2%82%ac&format=html"
  expect 404 GET "/sj?upstream=nope%22"
  expect 400 GET "/st?format=xml"
  expect 400 GET "/st?upstream=%zz"
  expect 400 GET "/sj?status=up&status=down"
  expect 200 HEAD /sp -I
  expect 200 GET "/sj?upstream=fleet"
  # A client reading at 256 KB/s: rendering pauses and resumes on write events.
  [[ $(curl -s -o "$out/last-body" -w '%{http_code}' --max-time 60 --limit-rate 256k \
    "http://127.0.0.1:$slow_front/sp") == 200 ]] || fail "slow client of /sp"
  grep -qF 'nginx_upstream_healthcheck_probe_duration_seconds_count{upstream="app"}' "$out/last-body" \
    || fail "slow client of /sp: page incomplete"
  expect 405 POST /st -d x=1
  # The control API.
  expect 200 GET /admin
  expect 200 POST /admin -d "t=gray&u=app&p=$up&a=set"
  expect 200 GET "/admin?t=gray&u=app&p=$up&a=get"
  expect 200 POST "/admin?t=gray&u=zoned&p=$up&a=set&ttl=1"
  expect 200 POST /admin -d "t=ex&u=tcp&a=set&ttl=3600"
  expect 200 GET /admin
  expect 200 GET /sj
  expect 200 POST /admin -d "t=gray&u=app&p=$up&a=del"
  expect 200 POST /admin -d "t=ex&u=tcp&a=del"
  expect 200 POST /admin -H 'Content-Length: 0'
  expect 405 GET "/admin?t=ex&u=tcp&a=set"
  expect 400 POST /admin -d "t=gray&u=app&a=set"
  expect 400 POST /admin -d "t=ex&u=app&a=set&ttl=-1"
  expect 400 POST /admin -d "bogus=1"
  expect 404 POST /admin -d "t=gray&u=app&p=10.0.0.1:1&a=set"
  expect 404 POST /admin -d "t=ex&u=nope&a=set"
  expect 415 POST /admin -H 'Content-Type: text/plain' --data-binary "t=ex&u=tcp&a=set"
  expect 413 POST /admin --data-binary "t=ex&u=tcp&a=set&$(printf 'x%.0s' $(seq 3000))"
  expect 200 POST /admin -H 'Transfer-Encoding: chunked' -d "t=ex&u=tcp&a=del"
  expect 405 PUT /admin -d x
  # Proxied traffic through every balancer kind (errors on dead peers are nginx's own business).
  for i in $(seq 10); do
    http GET "/a$i" >/dev/null
    http GET "/z$i" >/dev/null
    http GET "/p$i" >/dev/null
  done
}
exercise
log "status pages, control API and proxying exercised"
sleep "$probe_secs"

# reload [WRITE_CONF ARGS]: SIGHUP and wait until the worker set is entirely new and the old one gone.
reload() {
  local old new
  write_conf "$@"
  old=$(children)
  kill -HUP "$vg_pid"
  local end=$((SECONDS + 120))
  while :; do
    new=$(children)
    local fresh=1 p
    for p in $old; do [[ " $new " == *" $p "* ]] && fresh=0; done
    set -- $new
    if ((fresh)) && (($# >= workers)); then break; fi
    ((SECONDS < end)) || fail "reload: old workers ($old) still there or no new ones ($new) after 120 s"
    kill -0 "$vg_pid" 2>/dev/null || fail "nginx exited during a reload"
    sleep 0.5
  done
  worker_pids_seen+=" $new"
  wait_for 60 "the status page after the reload" status_has "$(addr refused) DOWN"
  log "reloaded: workers $old-> $new"
}
reload
exercise
sleep 3
if [[ $mode == full ]]; then
  # Peers added, then removed again; a changed check type.
  reload "        server $(addr down);
        server $(addr garbage) backup;" http
  exercise
  sleep "$probe_secs"
  reload ""
  exercise
  sleep 5
fi

# ---- clean stop -------------------------------------------------------------------------------
kill -QUIT "$vg_pid"
end=$((SECONDS + 120))
while kill -0 "$vg_pid" 2>/dev/null; do
  ((SECONDS < end)) || fail "nginx did not exit within 120 s of SIGQUIT"
  sleep 0.5
done
rc=0; wait "$vg_pid" || rc=$?
vg_pid=
((rc == 0)) || fail "nginx exited with status $rc"
log "nginx stopped"
grep -E '\[(alert|crit|emerg)\]' "$prefix/error.log" && fail "alert/crit/emerg lines in $prefix/error.log"

python3 scripts/memcheck.py analyze "$out/vg" "$module" | tee "$out/summary.txt"
rc=${PIPESTATUS[0]}
((rc == 0)) || fail "valgrind findings (see above; full logs in $out/vg)"
log "passed"
