#!/usr/bin/env bash
# The whole test suite: unit tests and end-to-end tests against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats-server.sh
cargo build --workspace --all-targets --quiet
cargo test --workspace "$@"
