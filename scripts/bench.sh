#!/usr/bin/env bash
# flowgate benchmark harness: flowgate side by side with the seed's design and a FIFO.
#
#   scripts/bench.sh            the full suite (several minutes)
#   scripts/bench.sh --quick    the short suite (< 60 s of measuring on two cores; what CI runs)
#
# Other arguments go to `flowgate-bench all` (e.g. --out DIR, --shards N, --producers P).
# Results: bench/results/{throughput,latency,scaling,scenarios,extproc,pool}.json plus SVG plots.
# Exits non-zero only when the harness is broken (build failure, crash, missing or invalid result
# files); timings and targets are reported, never enforced.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release -p flowgate-bench
exec ./target/release/flowgate-bench all "$@"
