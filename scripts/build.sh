#!/usr/bin/env bash
# Builds the module for one nginx target and prints NGX_HC_NGINX=/NGX_HC_MODULE= (usage: build.sh debian|vendored [--release]).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${1:-}; profile=debug; flags=()
case ${2:-} in --release) profile=release; flags=(--release) ;; "") ;; *) target= ;; esac
unset NGINX_BUILD_DIR NGINX_SOURCE_DIR
so_name=libngx_http_upstream_healthcheck_module.so
case $target in
  debian)  # the module for Debian's /usr/sbin/nginx, against its configured source tree (nginx-dev)
    src=$root/target/debian-src
    stamp="$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || true)"
    if [[ ! -f $src/objs/ngx_auto_config.h || "$(cat "$src/.stamp" 2>/dev/null)" != "$stamp" ]]; then
      rm -rf "$src" && mkdir -p target && cp -r /usr/share/nginx/src "$src"
      (cd "$src" && source ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}") >"$root/target/debian-configure.log" 2>&1 \
        || { tail -n 30 "$root/target/debian-configure.log" >&2; exit 1; }
      echo "$stamp" >"$src/.stamp"
    fi
    NGINX_BUILD_DIR=$src/objs cargo build -q --target-dir target/debian "${flags[@]}"
    nginx=/usr/sbin/nginx
    module=$root/target/debian/$profile/$so_name
    sig() { grep -aoE -m1 '8,4,8,[01]+' "$1" | head -n1; }
    [[ "$(sig "$nginx")" == "$(sig "$module")" ]] || { echo "build: module signature differs from $nginx" >&2; exit 1; }
    ;;
  vendored)  # nginx 1.28 built from the nginx-src crate, and the module against it
    # The build-script message names the nginx-sys out dir this build really uses (there may be several).
    out_dir=$(cargo build -q --features vendored --target-dir target/vendored "${flags[@]}" \
      --message-format=json-render-diagnostics | grep -o '"out_dir":"[^"]*/nginx-sys-[^"]*"' | cut -d'"' -f4 | tail -n1)
    nginx=$out_dir/objs/nginx
    module=$root/target/vendored/$profile/$so_name
    ;;
  *) echo "usage: $0 debian|vendored [--release]" >&2; exit 2 ;;
esac
[[ -x $nginx && -f $module ]] || { echo "build: missing $nginx or $module" >&2; exit 1; }
# `cargo test` rebuilds the cdylib in place (panic=unwind for the test profile), so hand out a copy.
out=$root/target/modules/$target-$profile
mkdir -p "$out" && cp "$module" "$out/ngx_http_upstream_healthcheck_module.so.tmp"
mv "$out/ngx_http_upstream_healthcheck_module.so.tmp" "$out/ngx_http_upstream_healthcheck_module.so"
echo "NGX_HC_NGINX=$nginx"
echo "NGX_HC_MODULE=$out/ngx_http_upstream_healthcheck_module.so"
