# Sourced (not run) by the scripts that start the real binaries: e2e-envoy.sh, check-deploy.sh,
# demo.sh.
#
#   source scripts/release-bins.sh   # needs ROOT (the repository root)
#   release_bins                     # sets FLOWGATE_BIN and FLOWGATE_SIM_BIN
#
# Builds `flowgate` and `flowgate-sim` in release mode, skipping each one whose path is already
# given in FLOWGATE_BIN / FLOWGATE_SIM_BIN, honours CARGO_TARGET_DIR, bounds the build by
# BUILD_TIMEOUT seconds (default 1800), and fails (non-zero; with `set -e` the caller exits) when a
# binary is missing afterwards.

release_bins() {
    local target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    local pkgs=()
    [[ -n "${FLOWGATE_BIN:-}" ]] || pkgs+=(-p flowgate)
    [[ -n "${FLOWGATE_SIM_BIN:-}" ]] || pkgs+=(-p flowgate-sim)
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        echo "==> cargo build --release ${pkgs[*]}"
        (cd "$ROOT" && timeout "${BUILD_TIMEOUT:-1800}" cargo build --release "${pkgs[@]}") || return 1
    fi
    FLOWGATE_BIN="${FLOWGATE_BIN:-$target_dir/release/flowgate}"
    FLOWGATE_SIM_BIN="${FLOWGATE_SIM_BIN:-$target_dir/release/flowgate-sim}"
    local b
    for b in "$FLOWGATE_BIN" "$FLOWGATE_SIM_BIN"; do
        if [[ ! -x "$b" ]]; then
            echo "binary not found: $b" >&2
            return 1
        fi
    done
}
