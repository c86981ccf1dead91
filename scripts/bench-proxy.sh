#!/usr/bin/env bash
# cache_proxy against nginx proxy_cache and Varnish on cache hits, and its Redis tier against
# redis-benchmark, all in one run on loopback; prints one markdown table with rps, p50, p99 and
# the ratios issue F sets goals for:
#   cache_proxy hit rps ≥ 1.0 × nginx proxy_cache and ≥ 1.3 × varnish, at 1 KiB and 100 KiB;
#   L2-only hit rps (l1.size = 0) ≥ 0.8 × redis-benchmark GET of the same size and concurrency.
#
#   bash scripts/bench-proxy.sh                  # wrk -t1 -c32 -d10s per cell, about 3.5 minutes
#   DURATION=5s bash scripts/bench-proxy.sh
#   ROUNDS=3 bash scripts/bench-proxy.sh         # every cell 3 times, interleaved; medians
#
# Installs nginx, varnish and wrk (apt-get) when missing, with their services held back. The
# origin is an nginx serving static files (Cache-Control: max-age=3600) from a temp dir; every
# server listens on a free 127.0.0.1 port, keeps its files in that temp dir, and is stopped on
# exit. The L2 rows use a private redis-server without persistence.
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
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
varnishd_bin=$(command -v varnishd || echo /usr/sbin/varnishd)

# Static files: base64 of random bytes, which brotli (on by default for Redis) shrinks by ~25 %.
mkdir -p "$BENCH_TMP/www"
for size in "${SIZES[@]}"; do
  python3 -c 'import base64, os, sys; n = int(sys.argv[1]); print(base64.b64encode(os.urandom(n))[:n].decode(), end="")' \
    "$size" >"$BENCH_TMP/www/$size.txt"
done
chmod -R a+rX "$BENCH_TMP/www"

# nginx with `server` as its only server block, its files under $BENCH_TMP/<name>.
start_nginx() {
  local name=$1 server=$2 dir="$BENCH_TMP/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  # tcp_nopush (TCP_CORK) stalls 100 KiB proxy_cache hits on 40 ms delayed ACKs on loopback
  # (under 1k rps); without it nginx serves them at full speed.
  tcp_nopush off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  default_type text/plain;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  $server
}
EOF
  bench_spawn "$name" "$nginx_bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
}

origin_port=$(bench_free_port)
start_nginx origin "server {
    listen 127.0.0.1:$origin_port;
    root $BENCH_TMP/www;
    location / { add_header Cache-Control \"max-age=3600\"; }
  }"
bench_wait_http "http://127.0.0.1:$origin_port/1024.txt"

nginx_port=$(bench_free_port)
start_nginx proxy_cache "proxy_cache_path $BENCH_TMP/proxy_cache/cache levels=1:2 keys_zone=bench:16m max_size=1g use_temp_path=off;
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

for port in $nginx_port $varnish_port $l1_port $l2_port $l2_plain_port; do
  bench_wait_http "http://127.0.0.1:$port/1024.txt"
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
    path="/$size.txt"
    # Each cache is warmed right before its own run.
    bench_warm "http://127.0.0.1:$nginx_port$path" x-cache-status HIT
    measure "nginx $size" bench_wrk "http://127.0.0.1:$nginx_port$path"
    bench_warm "http://127.0.0.1:$varnish_port$path" age '^[1-9]'
    measure "varnish $size" bench_wrk "http://127.0.0.1:$varnish_port$path"
    bench_warm "http://127.0.0.1:$l1_port$path" cache-status 'hit; detail=memory'
    measure "l1 $size" bench_wrk "http://127.0.0.1:$l1_port$path"
    bench_warm "http://127.0.0.1:$l2_port$path" cache-status 'hit; detail=redis'
    measure "l2 $size" bench_wrk "http://127.0.0.1:$l2_port$path"
    bench_warm "http://127.0.0.1:$l2_plain_port$path" cache-status 'hit; detail=redis'
    measure "l2 plain $size" bench_wrk "http://127.0.0.1:$l2_plain_port$path"
    measure "redis $size" redis_get "$size"
  done
done
for key in "${!samples[@]}"; do
  IFS=';' read -r -a lines <<<"${samples[$key]}"
  rps[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $1 }'))
  p50[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $2 }'))
  p99[$key]=$(median $(printf '%s\n' "${lines[@]}" | awk '{ print $3 }'))
done

label() { [ "$1" = 1024 ] && echo "1 KiB" || echo "100 KiB"; }
goal() {
  awk -v r="$1" -v g="$2" 'BEGIN { printf "%.2f× (goal ≥ %.1f: %s)", r, g, (r >= g) ? "met" : "missed" }'
}
row() { echo "| $1 | $2 | ${rps[$3]} | ${p50[$3]} | ${p99[$3]} | $4 |"; }

echo
echo "### Cache hits, $(date -u +%F), $(nproc) cores, wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION, all on 127.0.0.1, median of $ROUNDS round(s)"
echo
echo "| size | server | rps | p50 ms | p99 ms | ratio |"
echo "|---|---|---|---|---|---|"
for size in "${SIZES[@]}"; do
  s=$(label "$size")
  row "$s" "nginx proxy_cache" "nginx $size" ""
  row "$s" "varnish" "varnish $size" ""
  vs_nginx=$(goal "$(bench_ratio "${rps[l1 $size]}" "${rps[nginx $size]}")" 1.0)
  vs_varnish=$(goal "$(bench_ratio "${rps[l1 $size]}" "${rps[varnish $size]}")" 1.3)
  row "$s" "**cache_proxy** (memory hit)" "l1 $size" "vs nginx $vs_nginx; vs varnish $vs_varnish"
  row "$s" "redis-benchmark GET -c32" "redis $size" ""
  vs_redis=$(goal "$(bench_ratio "${rps[l2 $size]}" "${rps[redis $size]}")" 0.8)
  row "$s" "**cache_proxy** (Redis hit, l1.size = 0)" "l2 $size" "vs redis-benchmark $vs_redis"
  vs_redis=$(bench_ratio "${rps[l2 plain $size]}" "${rps[redis $size]}")
  row "$s" "cache_proxy (Redis hit, l1.size = 0, compression off)" "l2 plain $size" "vs redis-benchmark ${vs_redis}×"
done
