#!/usr/bin/env bash
# Installs nats-server from Debian's packages when it is not on PATH (or NATS_SERVER_BIN is unset).
set -euo pipefail
if [ -n "${NATS_SERVER_BIN:-}" ] || command -v nats-server >/dev/null 2>&1; then
  exit 0
fi
echo "nats-server not found; installing Debian's package" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
command -v nats-server >/dev/null 2>&1 || { echo "nats-server still not on PATH after install" >&2; exit 1; }
