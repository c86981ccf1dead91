#!/usr/bin/env bash
# Runs the criterion benches of issue F (benches/codec.rs, benches/layer.rs) and the allocation
# count (benches/alloc.rs), then prints what they mean: the layer's overhead per request over
# the bare service measured in the same run, in ns and as a ratio, against the goals.
#
#   bash scripts/bench-report.sh            # cargo bench, then the tables (about 3 minutes)
#   bash scripts/bench-report.sh --no-run   # the tables from the last run in target/criterion
#
# Medians are used: on a shared 2-core machine they move less than means.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-run" ]; then
  cargo bench --bench codec --bench layer >&2
  cargo bench --bench alloc 2>/dev/null | tee target/criterion/alloc.md >&2
fi

python3 - target/criterion <<'PY'
import json, pathlib, sys

root = pathlib.Path(sys.argv[1])

def median(name):
    path = root / name / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]

def show(ns):
    if ns is None:
        return "–"
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"

print("### Layer against the bare service (same request, same run), medians\n")
print("| path | baseline | baseline time | layer time | overhead | baseline/layer | goal |")
print("|---|---|---|---|---|---|---|")
rows = [
    ("memory hit, 1 KiB", "bare service", "memory_hit_1KiB/bare", "memory_hit_1KiB/layer",
     lambda base, layer: f"overhead ≤ 1 µs: {'met' if layer - base <= 1000 else 'missed'}"),
    ("miss (no-store), 1 KiB", "bare service", "miss_no_store_1KiB/bare",
     "miss_no_store_1KiB/layer", lambda base, layer: ""),
    ("axum router, memory hit, 1 KiB", "bare router", "axum_hit_1KiB/bare",
     "axum_hit_1KiB/layer", lambda base, layer: "in-process; the ≥ 0.90 goal is over HTTP: scripts/bench-axum.sh"),
    ("Redis hit (l1.size = 0), 1 KiB", "fred GET of the stored value", "redis_hit/fred_get/1KiB",
     "redis_hit/layer/1KiB", lambda base, layer: ""),
    ("Redis hit (l1.size = 0), 100 KiB", "fred GET of the stored value",
     "redis_hit/fred_get/100KiB", "redis_hit/layer/100KiB", lambda base, layer: ""),
]
for label, baseline, base_name, layer_name, goal in rows:
    base, layer = median(base_name), median(layer_name)
    if base is None or layer is None:
        print(f"| {label} | {baseline} | {show(base)} | {show(layer)} | – | – | not run |")
        continue
    print(f"| {label} | {baseline} | {show(base)} | {show(layer)} | {show(layer - base)} "
          f"| {base / layer:.2f} | {goal(base, layer)} |")

print("\n### Codec and keys, medians\n")
print("| bench | time | throughput |")
print("|---|---|---|")
for size, nbytes in (("1KiB", 1024), ("100KiB", 102400)):
    for op in ("encode_plain", "decode_plain", "encode_brotli", "decode_brotli"):
        ns = median(f"codec/{op}/{size}")
        rate = f"{nbytes / ns * 1e9 / 2**20:.0f} MiB/s" if ns else "–"
        print(f"| {op.replace('_', ' ')} {size} | {show(ns)} | {rate} |")
for name in ("primary", "primary_with_2_key_headers"):
    print(f"| key {name.replace('_', ' ')} | {show(median(f'key/{name}'))} | |")
PY

if [ -f target/criterion/alloc.md ]; then
  echo
  cat target/criterion/alloc.md
fi
