#!/usr/bin/env bash
# The single-node demo: installs nats-server if missing, builds carrier, runs `carrier demo`.
# Extra arguments go to `carrier demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats-server.sh
cargo build --release --quiet --bin carrier
exec target/release/carrier demo "$@"
