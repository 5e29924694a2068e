#!/usr/bin/env bash
# The chaos checker by hand: one line per run with its seed, PASS or FAIL.
#   scripts/chaos.sh                 # 5 runs with random seeds
#   scripts/chaos.sh 7 8 9           # those seeds
#   RUNS=20 scripts/chaos.sh -- --events 50000 --kills 20 --nats-restarts 5 --instances 3
# Exit status: non-zero when any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats-server.sh >/dev/null
seeds=()
while [[ $# -gt 0 && "$1" != "--" ]]; do seeds+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
if [[ ${#seeds[@]} -eq 0 ]]; then
  for _ in $(seq "${RUNS:-5}"); do seeds+=("$(( (RANDOM << 15) | RANDOM ))"); done
fi
cargo build --release -q -p carrier-chaos
failed=0
for seed in "${seeds[@]}"; do
  target/release/carrier-chaos check --seed "$seed" "$@" || failed=1
done
exit "$failed"
