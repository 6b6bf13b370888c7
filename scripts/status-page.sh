#!/usr/bin/env bash
# The status page (`GET /` on the metrics listener) in a real browser.
#
#   bash scripts/status-page.sh
#
# Installs Debian's chromium when /usr/bin/chromium is missing (root, apt; `apt-get update` first
# only if the plain install fails), then runs the ignored browser test
# `shim/tests/status_page.rs::browser_renders_queue_backend_workloads_and_decisions`: flowgate
# and a flowgate-sim backend start in-process, requests are queued over ext_proc, and the page is
# loaded in headless Chromium (`--dump-dom`) and its rendered DOM checked. No release build: the
# test binary holds both servers.
# Env: CHROMIUM (browser path, default /usr/bin/chromium; no install when set),
#      UI_TIMEOUT (bound on build + test, default 1800 s), CARGO_TARGET_DIR.
# Fails when Chromium cannot be installed or the test did not run and pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UI_TIMEOUT="${UI_TIMEOUT:-1800}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
TEST=browser_renders_queue_backend_workloads_and_decisions

install_chromium() {
    export DEBIAN_FRONTEND=noninteractive
    echo "status-page: installing chromium (apt)"
    if ! apt-get install -y --no-install-recommends chromium; then
        apt-get update
        apt-get install -y --no-install-recommends chromium
    fi
    apt-get clean # the downloaded .debs are not needed once installed
}

if [[ ! -x "$CHROMIUM" ]]; then
    if [[ "$CHROMIUM" != /usr/bin/chromium ]]; then
        echo "status-page: CHROMIUM=$CHROMIUM is not an executable" >&2
        exit 1
    fi
    install_chromium
fi
if [[ ! -x "$CHROMIUM" ]]; then
    echo "status-page: $CHROMIUM still missing after the install" >&2
    exit 1
fi
"$CHROMIUM" --version

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
CHROMIUM="$CHROMIUM" timeout "$UI_TIMEOUT" \
    cargo test -p flowgate --test status_page -- --ignored --exact "$TEST" 2>&1 | tee "$log" || status=$?
if ((status != 0)); then
    echo "status-page: FAILED (exit $status)" >&2
    exit "$status"
fi
# A filtered-out or renamed test must not pass as a run.
if ! grep -q "^test $TEST \.\.\. ok$" "$log"; then
    echo "status-page: $TEST did not run" >&2
    exit 1
fi
echo "status-page: ok"
