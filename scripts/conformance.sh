#!/usr/bin/env bash
# Runs the public HTTP cache test suite against examples/cache_proxy, with the crate's default
# settings, and scores it like cache-tests.fyi. Two versions of the suite run, one after the other:
#
#   current  the suite cache-tests.fyi shows today: the copy in ../shared/conformance/
#            (cache-tests-2026-07, read-only; copied to a temp dir, `undici@7` installed for it)
#   0.4.5    npm http-cache-tests 0.4.5, the last published package
#
#   scripts/conformance.sh [CURRENT_REQUIRED CURRENT_OPTIMAL [V045_REQUIRED V045_OPTIMAL]]
#
# Prints each suite's "required P/R  optimal P/O ..." and its failed required tests; exits
# non-zero when a score is below its minimum (default 0), or on any setup or harness failure other
# than the expected ones below. Loopback only; about two minutes plus the build.
# CONFORMANCE_RESULTS=dir keeps the raw result files (current.json, 0.4.5.json) there;
# CONFORMANCE_CONFIG=path runs with that configuration instead of the defaults.
set -euo pipefail
min_current_required=${1:-0}
min_current_optimal=${2:-0}
min_045_required=${3:-0}
min_045_optimal=${4:-0}
cd "$(dirname "$0")/.."
root=$(pwd)

# The default `http.store_set_cookie = false` keeps responses that set cookies out of the shared
# cache; the suites store one and expect it replayed, so these tests fail in setup by design.
expected_setup="headers-store-Set-Cookie 304-etag-update-response-Set-Cookie"

# The current suite lives beside the repository (../shared/conformance/); a clone made elsewhere
# finds it beside the repository it was cloned from, or at $CONFORMANCE_SUITE.
suite_candidates=("${CONFORMANCE_SUITE:-}" "$root/../shared/conformance/cache-tests-2026-07")
origin=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
if [ -n "$origin" ] && [ -d "$origin" ]; then
  suite_candidates+=("$origin/../shared/conformance/cache-tests-2026-07")
fi
current_suite=""
for candidate in "${suite_candidates[@]}"; do
  if [ -n "$candidate" ] && [ -f "$candidate/tests/index.mjs" ]; then
    current_suite=$(cd "$candidate" && pwd)
    break
  fi
done
if [ -z "$current_suite" ]; then
  echo "the current suite is missing: expected a copy of cache-tests at" >&2
  echo "$root/../shared/conformance/cache-tests-2026-07 (see ../shared/conformance/README.md)," >&2
  echo "or set CONFORMANCE_SUITE to one" >&2
  exit 1
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing node and npm"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
fi

work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# One install for both: 0.4.5 itself, and undici, which the current suite's interim tests load
# (Node finds it in $work/node_modules from the copy in $work/current).
npm install --prefix "$work" --no-audit --no-fund --silent http-cache-tests@0.4.5 undici@7
cp -r "$current_suite" "$work/current"

config_args=()
if [ -n "${CONFORMANCE_CONFIG:-}" ]; then config_args=(--config "$CONFORMANCE_CONFIG"); fi

cargo build --quiet --example cache_proxy
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
proxy="$target_dir/debug/examples/cache_proxy"

# run NAME DIR SERVER CLIENT SCORER: the suite's origin, a fresh proxy in front of it, the
# client through the proxy; the score goes to $work/NAME.score.
run() {
  local name=$1 dir=$2 server=$3 client=$4 scorer=$5
  local origin_port proxy_port
  origin_port=$(free_port)
  proxy_port=$(free_port)
  (cd "$dir" && npm_config_protocol=http npm_config_port="$origin_port" \
    npm_config_pidfile="$work/$name-origin.pid" exec node "$server") >"$work/$name-origin.log" 2>&1 &
  pids+=($!)
  RUST_LOG=warn "$proxy" --listen "127.0.0.1:$proxy_port" --upstream "http://127.0.0.1:$origin_port" \
    "${config_args[@]}" >"$work/$name-proxy.log" 2>&1 &
  pids+=($!)
  wait_for_port "$origin_port"
  wait_for_port "$proxy_port"
  (cd "$dir" && npm_config_base="http://127.0.0.1:$proxy_port" npm_config_id='' npm_package_config_id='' \
    node --no-warnings "$client") >"$work/$name.json"
  stop
  if [ -n "${CONFORMANCE_RESULTS:-}" ]; then cp "$work/$name.json" "$CONFORMANCE_RESULTS/$name.json"; fi
  SHOW_FAILED=1 node "$root/scripts/conformance/$scorer" "$dir" "$work/$name.json" >"$work/$name.score"
}

status=0
# check NAME SCORE_FILE MIN_REQUIRED MIN_OPTIMAL: prints the score and judges it.
check() {
  local name=$1 score min_required=$3 min_optimal=$4
  score=$(cat "$2")
  echo "$score"
  local line required_pass required_total optimal_pass optimal_total harness setup_failed
  line=$(echo "$score" | head -1)
  read -r required_pass required_total optimal_pass optimal_total harness <<<"$(echo "$line" |
    sed -E 's/.*required ([0-9]+)\/([0-9]+) +optimal ([0-9]+)\/([0-9]+) +setup [0-9]+ harness ([0-9]+).*/\1 \2 \3 \4 \5/')"
  setup_failed=$(echo "$score" | sed -n 's/^  setup-failed: *//p')
  echo "$name: required $required_pass/$required_total optimal $optimal_pass/$optimal_total"
  if [ "$required_pass" -lt "$min_required" ]; then
    echo "FAIL: $name: required $required_pass is below $min_required" >&2
    status=1
  fi
  if [ "$optimal_pass" -lt "$min_optimal" ]; then
    echo "FAIL: $name: optimal $optimal_pass is below $min_optimal" >&2
    status=1
  fi
  for id in $setup_failed; do
    if [[ " $expected_setup " != *" $id "* ]]; then
      echo "FAIL: $name: setup failure in $id" >&2
      status=1
    fi
  done
  if [ "$harness" -ne 0 ]; then
    echo "FAIL: $name: $harness harness failures" >&2
    status=1
  fi
}

run current "$work/current" test-engine/server/server.mjs test-engine/cli.mjs score-current.mjs
check "current suite" "$work/current.score" "$min_current_required" "$min_current_optimal"
run 0.4.5 "$work/node_modules/http-cache-tests" server/server.mjs cli.mjs score.mjs
check "suite 0.4.5" "$work/0.4.5.score" "$min_045_required" "$min_045_optimal"
exit $status
