#!/usr/bin/env bash
# Runs the public HTTP cache test suite (npm http-cache-tests 0.4.5, as on cache-tests.fyi) against
# examples/cache_proxy and scores it like the website.
#
#   scripts/conformance.sh [MIN_REQUIRED] [MIN_OPTIMAL]
#
# Prints "required P/R  optimal P/O ..." and the failed required test ids; exits non-zero when the
# required score is below MIN_REQUIRED (default 0) or the optimal score below MIN_OPTIMAL
# (default 0), or on any setup or harness failure. Loopback only; about 30 s plus the build.
# CONFORMANCE_RESULTS=path keeps the raw results file.
set -euo pipefail
min_required=${1:-0}
min_optimal=${2:-0}
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing node and npm"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
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

npm install --prefix "$work" --no-audit --no-fund --silent http-cache-tests@0.4.5
suite="$work/node_modules/http-cache-tests"

# The suite requires storing (and replaying) Set-Cookie, as RFC 9111 allows; the crate's default
# keeps responses that set cookies out of the shared cache, so the run enables it explicitly.
# CONFORMANCE_CONFIG=path runs with another configuration instead.
config="${CONFORMANCE_CONFIG:-$work/cache.toml}"
if [ -z "${CONFORMANCE_CONFIG:-}" ]; then
  printf '[http]\nstore_set_cookie = true\n' >"$config"
fi

cargo build --quiet --example cache_proxy
origin_port=$(free_port)
proxy_port=$(free_port)

(cd "$suite" && npm_config_protocol=http npm_config_port="$origin_port" npm_config_pidfile="$work/origin.pid" \
  exec node server/server.mjs) >"$work/origin.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$root/target/debug/examples/cache_proxy" --listen "127.0.0.1:$proxy_port" \
  --upstream "http://127.0.0.1:$origin_port" --config "$config" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_for_port "$origin_port"
wait_for_port "$proxy_port"

(cd "$suite" && npm_config_base="http://127.0.0.1:$proxy_port" npm_package_config_id='' \
  node --no-warnings cli.mjs) >"$work/results.json"

if [ -n "${CONFORMANCE_RESULTS:-}" ]; then cp "$work/results.json" "$CONFORMANCE_RESULTS"; fi
score=$(SHOW_FAILED=1 node "$root/scripts/conformance/score.mjs" "$suite" "$work/results.json")
echo "$score"
line=$(echo "$score" | head -1)
read -r required_pass required_total optimal_pass optimal_total setup harness <<<"$(echo "$line" |
  sed -E 's/.*required ([0-9]+)\/([0-9]+) +optimal ([0-9]+)\/([0-9]+) +setup ([0-9]+) harness ([0-9]+).*/\1 \2 \3 \4 \5 \6/')"
echo "required $required_pass/$required_total optimal $optimal_pass/$optimal_total"
status=0
if [ "$required_pass" -lt "$min_required" ]; then
  echo "FAIL: required $required_pass is below $min_required" >&2
  status=1
fi
if [ "$optimal_pass" -lt "$min_optimal" ]; then
  echo "FAIL: optimal $optimal_pass is below $min_optimal" >&2
  status=1
fi
if [ "$setup" -ne 0 ] || [ "$harness" -ne 0 ]; then
  echo "FAIL: $setup setup and $harness harness failures" >&2
  status=1
fi
exit $status
