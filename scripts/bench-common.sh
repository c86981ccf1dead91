# Helpers for the benchmark scripts (sourced, not run): Debian packages on demand, free loopback
# ports, readiness checks, wrk runs that report rps and latency percentiles, and cleanup of
# every process a script started.

BENCH_PIDS=()
BENCH_TMP=""

# apt-get install for the commands missing from PATH (`command:package` pairs). Services the
# packages would start (nginx on :80, varnish on :6081) are held back with a policy-rc.d.
bench_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]}" >&2
  local sudo="" policy=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || $sudo rm -f "$policy"
}

# A temp dir (readable by the service users varnish and nginx drop to), removed on exit along
# with every process recorded by bench_spawn.
bench_setup() {
  BENCH_TMP=$(mktemp -d /tmp/bench.XXXXXX)
  chmod 755 "$BENCH_TMP"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  cat >"$BENCH_TMP/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %d %d %.0f %.0f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), errors))
end
LUA
}

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    # Stopped processes get 3 s to exit, then SIGKILL.
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [ -z "$BENCH_TMP" ] || rm -rf "$BENCH_TMP"
}

# Runs a command in the background, recorded for cleanup; its output goes to $BENCH_TMP/$1.log.
bench_spawn() {
  : "${BENCH_TMP:?call bench_setup first}"
  local name=$1
  shift
  "$@" >"$BENCH_TMP/$name.log" 2>&1 &
  BENCH_PIDS+=($!)
}

bench_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 20 s) until `url` answers.
bench_wait_http() {
  local url=$1
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

# Waits (at most 20 s) until something listens on 127.0.0.1:port.
bench_wait_port() {
  local port=$1
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $port" >&2
  return 1
}

# Requests `url` until the value of response header `header` matches `pattern` (at most 30
# times, 0.1 s apart: Varnish's Age needs a whole second to turn 1).
bench_warm() {
  local url=$1 header=$2 pattern=$3 value=""
  for _ in $(seq 30); do
    value=$(curl -fsS -o /dev/null -D - "$url" | tr -d '\r' | grep -i "^$header:" | cut -d' ' -f2- || true)
    if printf '%s' "$value" | grep -Eq "$pattern"; then return 0; fi
    sleep 0.1
  done
  echo "$url: $header is '$value', expected /$pattern/ after 30 requests" >&2
  return 1
}

# wrk -t1 -c$BENCH_CONNECTIONS for $BENCH_DURATION against `url`, with the request header
# `header` if given; prints "rps p50_ms p99_ms". Any error (socket or non-2xx/3xx) fails the run.
bench_wrk() {
  local url=$1 line
  local header=()
  [ -z "${2:-}" ] || header=(-H "$2")
  line=$(timeout $((${BENCH_DURATION%s} + 30)) wrk -t1 -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" \
    "${header[@]}" -s "$BENCH_TMP/report.lua" "$url" | grep '^RESULT')
  set -- $line
  if [ "$6" -ne 0 ]; then
    echo "$url: $6 errors in $2 requests" >&2
    return 1
  fi
  awk -v n="$2" -v us="$3" -v p50="$4" -v p99="$5" \
    'BEGIN { printf "%.0f %.2f %.2f\n", n / (us / 1e6), p50 / 1000, p99 / 1000 }'
}

# a/b to two decimals.
bench_ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}

# Starts nginx with `server` (one or more http-level blocks) as its configuration, its files
# under $BENCH_TMP/<name>: sendfile on, no access log, keep-alive without limit.
bench_nginx() {
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
  bench_spawn "$name" "$(command -v nginx || echo /usr/sbin/nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
}
