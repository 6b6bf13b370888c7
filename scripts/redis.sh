#!/usr/bin/env bash
# Make sure `redis-server` is installed (Debian's package): cluster mode's integration tests
# (shim/tests/cluster.rs) and `flowgate-bench cluster` start their own on a loopback port with
# persistence off. Idempotent; installs only when missing.
#
#   scripts/redis.sh          # install if missing, print the version
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis.sh: installing redis-server (Debian package)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package starts a system instance; the tests do not use it.
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version
