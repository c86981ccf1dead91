#!/usr/bin/env bash
# Checks the latency guarantees of the fault tests (tests/fault_kill.rs, tests/fault_pause.rs),
# which record their runs in target/tmp/fault-*.json: with Redis killed or paused under load,
#   p99 <= l2.timeout + origin latency, and L2 hits resume within 2 s of Redis coming back.
# Run after `cargo test` (as .ci/run does); the tests themselves assert only behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts its output (CARGO_TARGET_DIR may move it).
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
status=0
printf '| scenario | requests | failures | p50 ms | p99 ms | bound ms | max ms | L2 resumed after ms |\n|---|---|---|---|---|---|---|---|\n'
for scenario in kill pause; do
  file="$target_dir/tmp/fault-$scenario.json"
  if [ ! -f "$file" ]; then
    echo "missing $file: run cargo test --test fault_$scenario first" >&2
    exit 1
  fi
  python3 - "$file" <<'PY' || status=1
import json, sys
run = json.load(open(sys.argv[1]))
bound = run["timeout_ms"] + run["origin_ms"]
print(f'| {run["scenario"]} | {run["requests"]} | {run["failures"]} | {run["p50_ms"]:.2f} | {run["p99_ms"]:.2f} | {bound} | {run["max_ms"]:.2f} | {run["l2_resume_ms"]:.0f} |')
problems = []
if run["failures"]:
    problems.append(f'{run["failures"]} failed requests')
if run["p99_ms"] > bound:
    problems.append(f'p99 {run["p99_ms"]:.2f} ms above {bound} ms')
if run["l2_resume_ms"] > 2000:
    problems.append(f'L2 hits resumed after {run["l2_resume_ms"]:.0f} ms, more than 2000')
if problems:
    print(f'FAIL {run["scenario"]}: ' + '; '.join(problems), file=sys.stderr)
    sys.exit(1)
PY
done
exit $status
