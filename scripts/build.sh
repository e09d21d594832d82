#!/usr/bin/env bash
# Builds both modules (the workspace: http and stream) for one nginx target and prints
# NGX_HC_NGINX=/NGX_HC_MODULE=/NGX_HC_STREAM_MODULE= (and, for Debian, NGX_HC_STREAM_BASE=, the
# stream module of nginx itself to load first) (usage: build.sh debian|vendored [--release]).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${1:-}; profile=debug; flags=()
case ${2:-} in --release) profile=release; flags=(--release) ;; "") ;; *) target= ;; esac
unset NGINX_BUILD_DIR NGINX_SOURCE_DIR
modules=(ngx_http_upstream_healthcheck_module ngx_stream_upstream_healthcheck_module)
case $target in
  debian)  # the module for Debian's /usr/sbin/nginx, against its configured source tree (nginx-dev)
    src=$root/target/debian-src
    # nginx-dev's conf_flags leave the stream module out; Debian builds it (libnginx-mod-stream)
    # with these, and the stream module's bindings need its headers (ALL_INCS gets src/stream).
    stream_flags=(--with-stream=dynamic --with-stream_ssl_module --with-stream_realip_module)
    stamp="$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || true) ${stream_flags[*]}"
    if [[ ! -f $src/objs/ngx_auto_config.h || "$(cat "$src/.stamp" 2>/dev/null)" != "$stamp" ]]; then
      rm -rf "$src" && mkdir -p target && cp -r /usr/share/nginx/src "$src"
      (cd "$src" && source ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" "${stream_flags[@]}") \
        >"$root/target/debian-configure.log" 2>&1 \
        || { tail -n 30 "$root/target/debian-configure.log" >&2; exit 1; }
      echo "$stamp" >"$src/.stamp"
    fi
    NGINX_BUILD_DIR=$src/objs cargo build -q --workspace --target-dir target/debian "${flags[@]}"
    nginx=/usr/sbin/nginx
    built=$root/target/debian/$profile
    sig() { grep -aoE -m1 '8,4,8,[01]+' "$1" | head -n1; }
    for m in "${modules[@]}"; do
      [[ "$(sig "$nginx")" == "$(sig "$built/lib$m.so")" ]] || { echo "build: $m signature differs from $nginx" >&2; exit 1; }
    done
    stream_base=/usr/lib/nginx/modules/ngx_stream_module.so
    ;;
  vendored)  # nginx 1.28 built from the nginx-src crate, and the module against it
    # The build-script message names the nginx-sys out dir this build really uses (there may be several).
    out_dir=$(cargo build -q --workspace --features vendored --target-dir target/vendored "${flags[@]}" \
      --message-format=json-render-diagnostics | grep -o '"out_dir":"[^"]*/nginx-sys-[^"]*"' | cut -d'"' -f4 | tail -n1)
    nginx=$out_dir/objs/nginx
    built=$root/target/vendored/$profile
    stream_base=  # built into this nginx (nginx-src configures --with-stream)
    ;;
  *) echo "usage: $0 debian|vendored [--release]" >&2; exit 2 ;;
esac
[[ -x $nginx ]] || { echo "build: missing $nginx" >&2; exit 1; }
# `cargo test` rebuilds the cdylibs in place (panic=unwind for the test profile), so hand out copies.
out=$root/target/modules/$target-$profile
mkdir -p "$out"
for m in "${modules[@]}"; do
  [[ -f $built/lib$m.so ]] || { echo "build: missing $built/lib$m.so" >&2; exit 1; }
  cp "$built/lib$m.so" "$out/$m.so.tmp" && mv "$out/$m.so.tmp" "$out/$m.so"
done
echo "NGX_HC_NGINX=$nginx"
echo "NGX_HC_MODULE=$out/ngx_http_upstream_healthcheck_module.so"
echo "NGX_HC_STREAM_MODULE=$out/ngx_stream_upstream_healthcheck_module.so"
echo "NGX_HC_STREAM_BASE=$stream_base"
