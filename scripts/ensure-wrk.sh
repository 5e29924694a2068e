#!/usr/bin/env bash
# Installs Debian's wrk when missing: `carrier bench --store-node` loads a store node's HTTP API
# with it, and a test runs that bench at a small scale.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
echo "wrk not found; installing Debian's package" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
command -v wrk >/dev/null 2>&1 || { echo "wrk still missing after install" >&2; exit 1; }
