#!/usr/bin/env bash
# The whole test suite: unit tests, property tests, and end-to-end tests against real
# nats-server processes and a real headless Chromium. Ends with one line of totals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats-server.sh
scripts/ensure-chromium.sh
cargo build --workspace --all-targets --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
