#!/usr/bin/env bash
# Model-check flowgate-engine's cross-thread protocols with loom (the models live in loom-tests/).
#
#   scripts/loom.sh                 # every model
#   scripts/loom.sh cancel_races    # arguments go to the test binaries: a name filter, --nocapture...
#
# Under `--cfg flowgate_loom` the engine's `sync` facade is loom's, and loom explores every
# interleaving of each small model up to LOOM_MAX_PREEMPTIONS preemptions (default 3 here; each
# model prints how many executions it explored with --nocapture). Builds go to target/loom, apart
# from the normal build (the cfg changes every crate's flags). Exits non-zero if any model fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export RUSTFLAGS="--cfg flowgate_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"

start=$(date +%s)
status=0
cargo test -p flowgate-loom-tests --release --target-dir target/loom -- --test-threads=1 "$@" || status=$?
echo "loom: LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS, $(($(date +%s) - start)) s, exit $status"
exit "$status"
