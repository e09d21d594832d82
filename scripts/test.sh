#!/usr/bin/env bash
# Runs every test: setup, then per target (vendored, debian) build + integration tests; unit tests once (vendored, every workspace member); the Debian package test once. Usage: test.sh [FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
filter=("$@")
log_dir=target/test-logs
scripts/setup.sh
mkdir -p "$log_dir"
summary=(); passed=0; failed=0

# count WORD LOG: sum of "N WORD" over the "test result:" lines of a cargo test log.
count() { grep -E '^test result:' "$2" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}' || true; }

# run NAME CMD...: runs a cargo test command (bounded to 30 min), tees its output, adds its counts to the summary.
run() {
  local name=$1 t0=$SECONDS rc=0 p f; shift
  echo "=== $name: $*" >&2
  timeout --kill-after=30 1800 "$@" 2>&1 | tee "$log_dir/$name.log" || rc=$?
  p=$(count passed "$log_dir/$name.log"); f=$(count failed "$log_dir/$name.log")
  passed=$((passed + p)); failed=$((failed + f))
  summary+=("$(printf '%-22s %s: %d passed, %d failed (%ds)' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAILED)" "$p" "$f" $((SECONDS - t0)))")
  if [[ $rc != 0 ]]; then
    printf '%s\n' "--- summary ---" "${summary[@]}" "FAILED: $name (exit $rc), log: $log_dir/$name.log" >&2
    exit 1
  fi
}

# Integration tests of each nginx target: every [[test]] target with test = true (t/package.rs,
# test = false, changes the machine and runs once, after the loop).
mapfile -t integration < <(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
pkg = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "ngx-http-upstream-healthcheck")
for t in pkg["targets"]:
    if t["kind"] == ["test"] and t["test"]:
        print("--test=" + t["name"])')
((${#integration[@]})) || { echo "FAILED: no integration test targets in Cargo.toml" >&2; exit 1; }

for target in vendored debian; do
  t0=$SECONDS
  env_out=$(scripts/build.sh "$target") || { echo "FAILED: build.sh $target" >&2; exit 1; }
  eval "$(grep '^NGX_HC_' <<<"$env_out")"
  export NGX_HC_NGINX NGX_HC_MODULE NGX_HC_STREAM_MODULE NGX_HC_STREAM_BASE NGX_HC_TARGET=$target
  summary+=("$(printf '%-22s ok (%ds): %s' "build $target" $((SECONDS - t0)) "$NGX_HC_NGINX")")
  if [[ $target == vendored ]]; then
    cargo=(env -u NGINX_BUILD_DIR -u NGINX_SOURCE_DIR cargo test --features vendored --target-dir target/vendored)
    lint_t0=$SECONDS
    cargo fmt --all -- --check || { echo "FAILED: cargo fmt --check (run cargo fmt)" >&2; exit 1; }
    env -u NGINX_BUILD_DIR cargo clippy --workspace --all-targets --features vendored --target-dir target/vendored -- -D warnings \
      || { echo "FAILED: cargo clippy" >&2; exit 1; }
    summary+=("$(printf '%-22s ok (%ds)' "fmt + clippy" $((SECONDS - lint_t0)))")
    run "unit-$target" "${cargo[@]}" --workspace --lib -- "${filter[@]}"
  else
    cargo=(env -u NGINX_SOURCE_DIR NGINX_BUILD_DIR="$PWD/target/debian-src/objs" cargo test --target-dir target/debian)
  fi
  run "integration-$target" "${cargo[@]}" "${integration[@]}" -- --test-threads=4 "${filter[@]}"
done
# The Debian package (scripts/package.sh) installed into the machine's nginx and purged: once.
run package "${cargo[@]}" --test package -- "${filter[@]}"
printf '%s\n' "--- summary ---" "${summary[@]}"
echo "total: $passed passed, $failed failed"
