#!/usr/bin/env bash
# cache_proxy against nginx proxy_cache and Varnish on cache hits and on pass-through, and its
# Redis tier against the composed limit, all in one run on loopback; prints markdown tables with
# rps, p50, p99 and the ratios issue L sets goals for:
#   memory hit rps ≥ 1.0 × nginx proxy_cache (sendfile on) and ≥ 1.3 × Varnish;
#   Redis hit (l1.size = 0) rps ≥ 0.85 × the composed limit 1 / (1/R_memory_hit + 1/R_redis)
#     (≥ 0.9 × with Accept-Encoding: br, which gets a compressed entry's bytes as they are),
#     with R_redis from redis-benchmark GET of the same size at the same concurrency: an L2 hit
#     is an HTTP exchange and a Redis round trip on the same cores;
#   pass-through of uncacheable 1 KiB responses (Cache-Control: no-store) ≥ 1.0 × nginx
#     proxy_pass with a keep-alive upstream (Varnish, and cache_proxy --no-cache, shown too).
# Every hit cell runs with two kinds of body: base64 of random bytes (brotli barely shrinks it)
# and JSON-like text (brotli shrinks it well).
#
#   bash scripts/bench-proxy.sh                  # wrk -t1 -c32 -d10s per cell, about 8 minutes
#   DURATION=5s bash scripts/bench-proxy.sh
#   ROUNDS=3 bash scripts/bench-proxy.sh         # every cell 3 times, interleaved; medians
#
# Installs nginx, varnish and wrk (apt-get) when missing, with their services held back. The
# origin is an nginx serving static files (Cache-Control: max-age=3600; under /pass/ no-store)
# from a temp dir; every server listens on a free 127.0.0.1 port, keeps its files in that temp
# dir, and is stopped on exit. The L2 rows use a private redis-server without persistence.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh

BENCH_DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-1}
BENCH_CONNECTIONS=32
SIZES=(1024 102400)

bench_install nginx:nginx varnishd:varnish wrk:wrk redis-server:redis-server \
  redis-benchmark:redis-tools curl:curl python3:python3
cargo build --quiet --release --example cache_proxy
bench_setup
varnishd_bin=$(command -v varnishd || echo /usr/sbin/varnishd)

# Static files of each kind and size: base64 of random bytes, which brotli (on by default for
# Redis) shrinks by ~25 %, and JSON-like records, which it shrinks to a fraction.
KINDS=(base64 json)
mkdir -p "$BENCH_TMP/www/pass"
for size in "${SIZES[@]}"; do
  python3 - "$size" "$BENCH_TMP/www" <<'PY'
import base64, json, os, random, sys
n, www = int(sys.argv[1]), sys.argv[2]
with open(f"{www}/base64-{n}.txt", "w") as out:
    out.write(base64.b64encode(os.urandom(n))[:n].decode())
rng, records, text = random.Random(n), [], ""
while len(text) < n:
    records.append({"id": len(records), "name": f"user-{rng.randrange(10**6)}",
                    "email": f"u{rng.randrange(10**6)}@example.com", "active": rng.random() < 0.5,
                    "score": round(rng.random() * 100, 2), "tags": rng.sample(["a", "b", "c", "d", "e"], 2)})
    text = json.dumps(records)
with open(f"{www}/json-{n}.txt", "w") as out:
    out.write(text[:n])
PY
done
cp "$BENCH_TMP/www/base64-1024.txt" "$BENCH_TMP/www/pass/1024.txt"
chmod -R a+rX "$BENCH_TMP/www"

origin_port=$(bench_free_port)
bench_nginx origin "server {
    listen 127.0.0.1:$origin_port;
    root $BENCH_TMP/www;
    location / { add_header Cache-Control \"max-age=3600\"; }
    location /pass/ { add_header Cache-Control \"no-store\"; }
  }"
bench_wait_http "http://127.0.0.1:$origin_port/base64-1024.txt"

# nginx as a plain reverse proxy: the pass-through yardstick.
pass_port=$(bench_free_port)
bench_nginx proxy_pass "upstream origin { server 127.0.0.1:$origin_port; keepalive 32; }
  server {
    listen 127.0.0.1:$pass_port;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"

nginx_port=$(bench_free_port)
bench_nginx proxy_cache "proxy_cache_path $BENCH_TMP/proxy_cache/cache levels=1:2 keys_zone=bench:16m max_size=1g use_temp_path=off;
  upstream origin { server 127.0.0.1:$origin_port; keepalive 32; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_cache bench;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }"

varnish_port=$(bench_free_port)
bench_spawn varnish "$varnishd_bin" -F -n "$BENCH_TMP/varnish" -a "127.0.0.1:$varnish_port" \
  -b "127.0.0.1:$origin_port" -T 127.0.0.1:0 -s malloc,512m

# cache_proxy: memory only, and Redis only (l1.size = 0); no environment overrides.
cat >"$BENCH_TMP/l1.toml" <<EOF
[l1]
size = "512MB"
max_ttl = "1h"
EOF
cat >"$BENCH_TMP/l2.toml" <<EOF
[l1]
size = "0"
EOF
# The same without brotli: what decompressing costs each Redis hit.
cat >"$BENCH_TMP/l2-plain.toml" <<EOF
[l1]
size = "0"
[l2]
prefix = "plain"
[compression]
enabled = false
EOF
proxy_env=(env -u REDIS_URL -u L1_CACHE_SIZE -u CACHE_COMPRESSION RUST_LOG=warn)
l1_port=$(bench_free_port)
bench_spawn cache_proxy_l1 "${proxy_env[@]}" target/release/examples/cache_proxy \
  --listen "127.0.0.1:$l1_port" --upstream "http://127.0.0.1:$origin_port" \
  --config "$BENCH_TMP/l1.toml"

redis_port=$(bench_free_port)
mkdir -p "$BENCH_TMP/redis"
bench_spawn redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$BENCH_TMP/redis"
bench_wait_port "$redis_port"
l2_port=$(bench_free_port)
bench_spawn cache_proxy_l2 "${proxy_env[@]}" target/release/examples/cache_proxy \
  --listen "127.0.0.1:$l2_port" --upstream "http://127.0.0.1:$origin_port" \
  --config "$BENCH_TMP/l2.toml" --redis "redis://127.0.0.1:$redis_port"
l2_plain_port=$(bench_free_port)
bench_spawn cache_proxy_l2_plain "${proxy_env[@]}" target/release/examples/cache_proxy \
  --listen "127.0.0.1:$l2_plain_port" --upstream "http://127.0.0.1:$origin_port" \
  --config "$BENCH_TMP/l2-plain.toml" --redis "redis://127.0.0.1:$redis_port"

# The same server and upstream client without the cache: what the cache adds to a pass.
bare_port=$(bench_free_port)
bench_spawn cache_proxy_bare "${proxy_env[@]}" target/release/examples/cache_proxy \
  --listen "127.0.0.1:$bare_port" --upstream "http://127.0.0.1:$origin_port" --no-cache

for port in $nginx_port $pass_port $varnish_port $l1_port $l2_port $l2_plain_port $bare_port; do
  bench_wait_http "http://127.0.0.1:$port/base64-1024.txt"
done

# redis-benchmark GET of a `size`-byte value, -c32, for about $BENCH_DURATION (the request
# count is calibrated by a short first run); prints "rps p50_ms p99_ms".
redis_get() {
  local size=$1 seconds=${BENCH_DURATION%s} rps requests
  redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set -d "$size" -n 100 -c 1 -q >/dev/null
  rps=$(redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get -d "$size" -c 32 -n 20000 --csv |
    awk -F'","' 'NR == 2 { print int($2) }')
  requests=$((rps * seconds))
  [ "$requests" -le 5000000 ] || requests=5000000
  timeout $((seconds * 5 + 30)) redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get -d "$size" \
    -c 32 -n "$requests" --csv | awk -F'","' 'NR == 2 { printf "%.0f %.2f %.2f\n", $2, $5, $7 }'
}

# Each cell's samples, one per round; the table shows their medians.
declare -A rps p50 p99 samples
measure() {
  local key=$1 line
  shift
  line=$("$@") || true
  if [ -z "$line" ]; then
    echo "$key: measurement failed" >&2
    exit 1
  fi
  samples[$key]+="$line;"
  set -- $line
  echo "  $key: $1 rps, p50 $2 ms, p99 $3 ms" >&2
}

# The median of the given numbers (the lower middle one for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "measuring: $ROUNDS round(s), wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION per cell" >&2
for round in $(seq "$ROUNDS"); do
  echo " round $round" >&2
  for size in "${SIZES[@]}"; do
    for kind in "${KINDS[@]}"; do
      cell="$kind $size"
      path="/$kind-$size.txt"
      # Each cache is warmed right before its own run.
      bench_warm "http://127.0.0.1:$nginx_port$path" x-cache-status HIT
      measure "nginx $cell" bench_wrk "http://127.0.0.1:$nginx_port$path"
      bench_warm "http://127.0.0.1:$varnish_port$path" age '^[1-9]'
      measure "varnish $cell" bench_wrk "http://127.0.0.1:$varnish_port$path"
      bench_warm "http://127.0.0.1:$l1_port$path" cache-status 'hit; detail=memory'
      measure "l1 $cell" bench_wrk "http://127.0.0.1:$l1_port$path"
      bench_warm "http://127.0.0.1:$l2_port$path" cache-status 'hit; detail=redis'
      measure "l2 $cell" bench_wrk "http://127.0.0.1:$l2_port$path"
      measure "l2 br $cell" bench_wrk "http://127.0.0.1:$l2_port$path" "Accept-Encoding: br"
      bench_warm "http://127.0.0.1:$l2_plain_port$path" cache-status 'hit; detail=redis'
      measure "l2 plain $cell" bench_wrk "http://127.0.0.1:$l2_plain_port$path"
    done
    measure "redis $size" redis_get "$size"
  done
  # Pass-through: every request reaches the origin.
  path=/pass/1024.txt
  measure "pass nginx" bench_wrk "http://127.0.0.1:$pass_port$path"
  measure "pass varnish" bench_wrk "http://127.0.0.1:$varnish_port$path"
  measure "pass l1" bench_wrk "http://127.0.0.1:$l1_port$path"
  measure "pass bare" bench_wrk "http://127.0.0.1:$bare_port$path"
done
for key in "${!samples[@]}"; do
  IFS=';' read -r -a lines <<<"${samples[$key]}"
  rps[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $1 }'))
  p50[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $2 }'))
  p99[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $3 }'))
done

label() { [ "$1" = 1024 ] && echo "1 KiB" || echo "100 KiB"; }
goal() {
  awk -v r="$1" -v g="$2" 'BEGIN { printf "%.2f× (goal ≥ %.2f: %s)", r, g, (r >= g) ? "met" : "missed" }'
}
row() { echo "| $1 | $2 | ${rps[$3]} | ${p50[$3]} | ${p99[$3]} | $4 |"; }
# 1 / (1/a + 1/b), rounded.
composed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", 1 / (1 / a + 1 / b) }'; }

echo
echo "### Cache hits, $(date -u +%F), $(nproc) cores, wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION, all on 127.0.0.1, median of $ROUNDS round(s)"
echo
echo "| size, body | server | rps | p50 ms | p99 ms | ratio |"
echo "|---|---|---|---|---|---|"
for size in "${SIZES[@]}"; do
  for kind in "${KINDS[@]}"; do
    cell="$kind $size"
    s="$(label "$size"), $kind"
    row "$s" "nginx proxy_cache" "nginx $cell" ""
    row "$s" "varnish" "varnish $cell" ""
    vs_nginx=$(goal "$(bench_ratio "${rps[l1 $cell]}" "${rps[nginx $cell]}")" 1.0)
    vs_varnish=$(goal "$(bench_ratio "${rps[l1 $cell]}" "${rps[varnish $cell]}")" 1.3)
    row "$s" "**cache_proxy** (memory hit)" "l1 $cell" "vs nginx $vs_nginx; vs varnish $vs_varnish"
    limit=$(composed "${rps[l1 $cell]}" "${rps[redis $size]}")
    echo "| $s | composed limit 1/(1/memory hit + 1/redis-benchmark GET -c32 at ${rps[redis $size]}) | $limit | | | |"
    vs_limit=$(goal "$(bench_ratio "${rps[l2 $cell]}" "$limit")" 0.85)
    row "$s" "**cache_proxy** (Redis hit, l1.size = 0)" "l2 $cell" "vs composed limit $vs_limit"
    vs_limit=$(goal "$(bench_ratio "${rps[l2 br $cell]}" "$limit")" 0.9)
    row "$s" "**cache_proxy** (Redis hit, l1.size = 0, Accept-Encoding: br)" "l2 br $cell" "vs composed limit $vs_limit"
    vs_limit=$(bench_ratio "${rps[l2 plain $cell]}" "$limit")
    row "$s" "cache_proxy (Redis hit, l1.size = 0, compression off)" "l2 plain $cell" "vs composed limit ${vs_limit}×"
  done
done

echo
echo "### Pass-through (Cache-Control: no-store), 1 KiB, same run"
echo
echo "| server | rps | p50 ms | p99 ms | ratio |"
echo "|---|---|---|---|---|"
echo "| nginx proxy_pass (keep-alive upstream) | ${rps[pass nginx]} | ${p50[pass nginx]} | ${p99[pass nginx]} | |"
echo "| varnish | ${rps[pass varnish]} | ${p50[pass varnish]} | ${p99[pass varnish]} | |"
vs_nginx=$(goal "$(bench_ratio "${rps[pass l1]}" "${rps[pass nginx]}")" 1.0)
vs_varnish=$(bench_ratio "${rps[pass l1]}" "${rps[pass varnish]}")
vs_bare=$(bench_ratio "${rps[pass l1]}" "${rps[pass bare]}")
echo "| cache_proxy --no-cache (same server and client, no cache) | ${rps[pass bare]} | ${p50[pass bare]} | ${p99[pass bare]} | vs nginx $(bench_ratio "${rps[pass bare]}" "${rps[pass nginx]}")× |"
echo "| **cache_proxy** | ${rps[pass l1]} | ${p50[pass l1]} | ${p99[pass l1]} | vs nginx $vs_nginx; vs varnish ${vs_varnish}×; vs --no-cache ${vs_bare}× |"
