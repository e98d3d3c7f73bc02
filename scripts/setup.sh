#!/usr/bin/env bash
# Idempotent set-up: a project-local venv with the package and its test/export extras,
# and the local tritonserver (scripts/setup_triton.sh). Re-runs take seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: Python 3.11 is required (the Triton python-backend stub is built for 3.11); found $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

# Reinstall only when the dependency list changed.
stamp="$VENV/.kmr-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "[setup] installing the package with its export + test extras (first time: a few minutes)"
    # (the filter only hides this machine's pip-config warnings about absent local mirrors)
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" 2> >(grep -v "is ignored" >&2)
    "$VENV/bin/python" -m pip check
    echo "$want" > "$stamp"
else
    echo "[setup] venv up to date ($VENV)"
fi

# nginx: the real load balancer the rollout tests put in front of several replicas.
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    echo "[setup] installing nginx-light (Debian) for the load-balancer tests"
    sudo=""; [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light
fi

bash "$ROOT/scripts/setup_triton.sh" "$@"
