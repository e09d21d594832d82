#!/usr/bin/env bash
# Installs the Debian 12 packages needed to build and test the module (idempotent) and keeps the distro nginx service stopped; `--build`: only what building the package needs, services left alone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
sudo=(); [[ $EUID -eq 0 ]] || sudo=(sudo)
# Building the module and its Debian package (scripts/build.sh, scripts/package.sh).
pkgs=(nginx nginx-dev libclang-dev libpcre2-dev libssl-dev zlib1g-dev clang dpkg-dev binutils python3)
case ${1:-} in
  --build) build_only=1 ;;
  "") build_only=0
      # Running the tests (and lintian on the package; Debian's stream module for the stream module's tests).
      pkgs+=(libnginx-mod-stream curl procps iproute2 prometheus etcd-server etcd-client chromium chromium-driver wrk linux-perf valgrind lintian) ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  # Keep the package's maintainer scripts from starting the nginx service (standard policy-rc.d hook).
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
  fi
  apt() { local out; out=$("${sudo[@]}" apt-get "$@" 2>&1) || { echo "$out" >&2; exit 1; }; }
  apt update -qq
  apt install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (install rustup)" >&2; exit 1; }
((build_only)) && exit 0
# Stop and disable the distro nginx service so it neither holds port 80 nor shows up as a stray nginx process.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  "${sudo[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
else
  [[ -e /run/nginx.pid ]] && { "${sudo[@]}" service nginx stop >/dev/null 2>&1 || true; }
  command -v update-rc.d >/dev/null && { "${sudo[@]}" update-rc.d nginx disable >/dev/null 2>&1 || true; }
fi
if [[ -s /run/nginx.pid ]]; then
  pid=$(cat /run/nginx.pid)
  if kill -0 "$pid" 2>/dev/null; then
    "${sudo[@]}" kill -QUIT "$pid" || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && "${sudo[@]}" kill -KILL "$pid" || true
  fi
fi
exit 0
