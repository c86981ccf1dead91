#!/usr/bin/env bash
# Miss latency: what a cache miss costs on top of the origin, for 1 MB and 5 MB bodies, with the
# Redis tier on. Every request through cache_proxy is a miss (a new query string each time), so
# it streams the origin's body to the client while a copy is stored in memory and, after the
# response, in Redis. Each miss is paired with a request for the same URL straight to the origin
# in the same run; the table shows medians of time to first byte and total time (curl's
# time_starttransfer and time_total) and the medians of the per-pair differences, against issue J's goals: total within
# 2 ms of the origin's, first byte within 1 ms.
#
#   bash scripts/bench-miss.sh                 # 30 pairs per size
#   REQUESTS=100 bash scripts/bench-miss.sh
#   PAUSE=0 bash scripts/bench-miss.sh         # back to back: background writes overlap
#
# Installs nginx (apt-get) when missing, with its service held back. The origin is an nginx
# serving static files (base64 text, Cache-Control: max-age=3600) from a temp dir; every server
# listens on a free 127.0.0.1 port and is stopped on exit; redis-server is private, without
# persistence.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh

REQUESTS=${REQUESTS:-30}
# Pause between pairs, for the previous miss's background shared-tier write (brotli of a 5 MB
# body takes tens of milliseconds on the blocking pool) to end before the next pair, which on two
# cores it would otherwise slow down, the origin's request as much as the cache's.
PAUSE=${PAUSE:-0.5}
SIZES=(1048576 5242880)

bench_install nginx:nginx redis-server:redis-server curl:curl python3:python3
cargo build --quiet --release --example cache_proxy
bench_setup

mkdir -p "$BENCH_TMP/www" "$BENCH_TMP/redis"
for size in "${SIZES[@]}"; do
  python3 -c 'import base64, os, sys; n = int(sys.argv[1]); print(base64.b64encode(os.urandom(n))[:n].decode(), end="")' \
    "$size" >"$BENCH_TMP/www/$size.txt"
done
chmod -R a+rX "$BENCH_TMP/www"

origin_port=$(bench_free_port)
bench_nginx origin "server {
    listen 127.0.0.1:$origin_port;
    root $BENCH_TMP/www;
    location / { add_header Cache-Control \"max-age=3600\"; }
  }"
bench_wait_http "http://127.0.0.1:$origin_port/${SIZES[0]}.txt"

redis_port=$(bench_free_port)
bench_spawn redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$BENCH_TMP/redis"
bench_wait_port "$redis_port"

# Default configuration (memory tier, brotli for Redis, 8 MB entry limit) plus Redis.
proxy_port=$(bench_free_port)
bench_spawn cache_proxy env -u REDIS_URL -u L1_CACHE_SIZE -u CACHE_COMPRESSION RUST_LOG=warn \
  target/release/examples/cache_proxy --listen "127.0.0.1:$proxy_port" \
  --upstream "http://127.0.0.1:$origin_port" --redis "redis://127.0.0.1:$redis_port"
bench_wait_http "http://127.0.0.1:$proxy_port/${SIZES[0]}.txt?warm"

# One request; prints "first_byte_ms total_ms", or fails when the body is short or, through the
# cache, the request was not a stored miss.
fetch() {
  local url=$1 size=$2 expect=$3 out
  out=$(curl -sS -o "$BENCH_TMP/body" -D "$BENCH_TMP/headers" \
    -w '%{size_download} %{time_starttransfer} %{time_total}' "$url")
  set -- $out
  if [ "$1" -ne "$size" ]; then
    echo "$url: $1 bytes, expected $size" >&2
    return 1
  fi
  if [ -n "$expect" ] && ! tr -d '\r' <"$BENCH_TMP/headers" | grep -qi "^cache-status: .*$expect"; then
    echo "$url: Cache-Status is not '$expect':" >&2
    cat "$BENCH_TMP/headers" >&2
    return 1
  fi
  awk -v f="$2" -v t="$3" 'BEGIN { printf "%.3f %.3f\n", f * 1000, t * 1000 }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "measuring: $REQUESTS pairs per size (origin, then a miss through cache_proxy)" >&2
declare -A first total over_first over_total
for size in "${SIZES[@]}"; do
  for i in $(seq "$REQUESTS"); do
    path="/$size.txt?miss=$i"
    read -r f t < <(fetch "http://127.0.0.1:$origin_port$path" "$size" "")
    first[origin $size]+="$f " total[origin $size]+="$t "
    read -r pf pt < <(fetch "http://127.0.0.1:$proxy_port$path" "$size" "fwd=miss; fwd-status=200; stored")
    first[proxy $size]+="$pf " total[proxy $size]+="$pt "
    over_first[$size]+="$(awk -v a="$pf" -v b="$f" 'BEGIN { print a - b }') "
    over_total[$size]+="$(awk -v a="$pt" -v b="$t" 'BEGIN { print a - b }') "
    sleep "$PAUSE"
  done
  # The last miss was stored: the next request for it is a hit with the whole body.
  fetch "http://127.0.0.1:$proxy_port$path" "$size" "hit" >/dev/null
done

label() { awk -v s="$1" 'BEGIN { printf "%g MB", s / 1048576 }'; }
verdict() { awk -v d="$1" -v g="$2" 'BEGIN { printf "%+.2f ms (goal ≤ %g: %s)", d, g, (d <= g) ? "met" : "missed" }'; }

echo
echo "### Miss latency, $(date -u +%F), $(nproc) cores, all on 127.0.0.1, Redis on, median of $REQUESTS pairs, ${PAUSE} s apart"
echo
echo "| size | origin first byte ms | origin total ms | cache_proxy miss first byte ms | cache_proxy miss total ms | first byte over origin | total over origin |"
echo "|---|---|---|---|---|---|---|"
for size in "${SIZES[@]}"; do
  of=$(median ${first[origin $size]})
  ot=$(median ${total[origin $size]})
  pf=$(median ${first[proxy $size]})
  pt=$(median ${total[proxy $size]})
  echo "| $(label "$size") | $of | $ot | $pf | $pt | $(verdict "$(median ${over_first[$size]})" 1) | $(verdict "$(median ${over_total[$size]})" 2) |"
done
