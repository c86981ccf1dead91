#!/usr/bin/env bash
# The README's test command, and the one CI runs: installs the servers the tests start for
# themselves (redis-server, redis-cli, memcached) when they are missing, then runs
# `cargo test --all-features` with any further arguments (`bash scripts/test.sh --test tiers`).
# Packages come from apt-get, as root or through sudo, with their system services held back:
# the tests start their own servers on free ports and need none at the standard ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
bench_install redis-server:redis-server redis-cli:redis-tools memcached:memcached
exec cargo test --all-features "$@"
