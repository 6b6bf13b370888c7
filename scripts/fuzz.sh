#!/usr/bin/env bash
# Run one cargo-fuzz target for a while on the stable toolchain.
#
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer flags...]
#   scripts/fuzz.sh heap 60
#
# `--sanitizer none` is what makes cargo-fuzz work on stable: AddressSanitizer needs nightly's
# `-Zsanitizer`, while the coverage instrumentation libFuzzer needs does not. Our targets are
# safe Rust, so ASan adds little. If a future cargo-fuzz insists on nightly-only flags anyway,
# rerun with FUZZ_BOOTSTRAP=1, which sets RUSTC_BOOTSTRAP=1 (lets stable accept -Z flags).
# Needs cargo-fuzz (`cargo install cargo-fuzz`). New corpus entries land in target/fuzz-corpus/TARGET/;
# crashes in fuzz/artifacts/TARGET/.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
if [[ "${FUZZ_BOOTSTRAP:-0}" == 1 ]]; then
    export RUSTC_BOOTSTRAP=1
fi

# New inputs go to a scratch corpus under target/ (first directory); the committed seeds in
# fuzz/corpus/TARGET are read but never grown, so the repository stays small.
scratch="target/fuzz-corpus/$target"
mkdir -p "$scratch" "fuzz/corpus/$target" "fuzz/artifacts/$target"
exec cargo fuzz run --sanitizer none "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "$@"
