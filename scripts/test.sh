#!/usr/bin/env bash
# The whole test suite: unit tests, property tests, the API docs' examples, and end-to-end tests against real
# nats-server processes and a real headless Chromium; then the end-to-end tests again against a
# current nats-server release (Debian's is 2.9.10; both are supported). Ends with one line of
# totals. CARRIER_TEST_CURRENT_SERVER=0 skips the second pass (a quicker local run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats-server.sh
scripts/ensure-chromium.sh
scripts/ensure-wrk.sh
cargo build --workspace --all-targets --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
# The examples in the API docs compile and run too (--all-targets leaves them out).
cargo test --workspace --doc "$@" 2>&1 | tee -a "$log" || status=$?
if [ "${CARRIER_TEST_CURRENT_SERVER:-1}" != "0" ]; then
  current=$(scripts/ensure-current-nats-server.sh)
  echo
  echo "end-to-end tests again against $("$current" --version)"
  NATS_SERVER_BIN="$current" cargo test -p carrier-tests --test e2e "$@" 2>&1 | tee -a "$log" || status=$?
fi
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
