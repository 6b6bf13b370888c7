#!/usr/bin/env bash
# flowgate benchmark harness: flowgate side by side with the seed's design and a FIFO.
#
#   scripts/bench.sh            the full suite (several minutes)
#   scripts/bench.sh --quick    the short suite (< 60 s of measuring on two cores; what CI runs)
#
# Other arguments go to `flowgate-bench all` (e.g. --out DIR, --shards N, --producers P); then
# `flowgate-bench streams` (RSS per open ext_proc stream, the real `flowgate` binary beside a bare
# tonic server) runs with the same --quick and --out.
# Results: bench/results/{throughput,latency,scaling,scenarios,extproc,pool,streams}.json plus SVG
# plots. Exits non-zero only when the harness is broken (build failure, crash, missing or invalid
# result files); timings and targets are reported, never enforced.
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

# `streams` measures the release `flowgate` binary beside flowgate-bench.
cargo build --release -p flowgate -p flowgate-bench
./target/release/flowgate-bench all "$@"
exec ./target/release/flowgate-bench streams "${streams_args[@]}"
