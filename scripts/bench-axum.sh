#!/usr/bin/env bash
# Throughput of one axum handler with and without CacheLayer on the memory-hit path
# (examples/bench_axum.rs serves both, on two loopback ports), measured alternately with
# `wrk -t1 -c32` in the same run and reported as a ratio. Goal (issue F): cached ≥ 0.90 × bare.
#
#   bash scripts/bench-axum.sh            # 2 rounds of 10 s per variant, 1 KiB body (~1 min)
#   ROUNDS=3 DURATION=5s SIZE=4096 bash scripts/bench-axum.sh
#
# Installs wrk (apt-get) when missing. Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh

ROUNDS=${ROUNDS:-2}
SIZE=${SIZE:-1024}
BENCH_DURATION=${DURATION:-10s}
BENCH_CONNECTIONS=${CONNECTIONS:-32}

bench_install wrk:wrk curl:curl python3:python3
cargo build --quiet --release --example bench_axum
bench_setup

bare_port=$(bench_free_port)
cached_port=$(bench_free_port)
while [ "$cached_port" = "$bare_port" ]; do cached_port=$(bench_free_port); done
bench_spawn bench_axum env RUST_LOG=warn target/release/examples/bench_axum \
  --bare "127.0.0.1:$bare_port" --cached "127.0.0.1:$cached_port" --size "$SIZE"
bare_url="http://127.0.0.1:$bare_port/items/1"
cached_url="http://127.0.0.1:$cached_port/items/1"
bench_wait_http "$bare_url"
bench_warm "$cached_url" cache-status 'hit; detail=memory'

echo "## axum handler, ${SIZE}-byte body, wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION, $(date -u +%F)"
echo
echo "| round | bare rps | bare p50 ms | bare p99 ms | CacheLayer hit rps | hit p50 ms | hit p99 ms | hit/bare |"
echo "|---|---|---|---|---|---|---|---|"
bare_total=0
cached_total=0
for round in $(seq "$ROUNDS"); do
  read -r bare_rps bare_p50 bare_p99 < <(bench_wrk "$bare_url")
  read -r cached_rps cached_p50 cached_p99 < <(bench_wrk "$cached_url")
  bare_total=$((bare_total + bare_rps))
  cached_total=$((cached_total + cached_rps))
  echo "| $round | $bare_rps | $bare_p50 | $bare_p99 | $cached_rps | $cached_p50 | $cached_p99 | $(bench_ratio "$cached_rps" "$bare_rps") |"
done
ratio=$(bench_ratio "$cached_total" "$bare_total")
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.90) ? "met" : "missed" }')
echo "| all | $((bare_total / ROUNDS)) | | | $((cached_total / ROUNDS)) | | | **$ratio** (goal ≥ 0.90: $verdict) |"
