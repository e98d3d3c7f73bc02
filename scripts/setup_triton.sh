#!/usr/bin/env bash
# Set up a real, local NVIDIA Triton Inference Server (CPU, python backend) without Docker.
#
# Everything comes from PyPI and Debian apt and lands in a cache folder
# (default: ${XDG_CACHE_HOME:-~/.cache}/kmr-recommender/triton, override with KMR_TRITON_HOME):
#
#   downloads/                         the downloaded wheels (cache)
#   pytriton/tritonserver/bin/tritonserver   Triton 2.51.0 from nvidia-pytriton==0.7.0
#   pytriton/tritonserver/backends/python/   python backend + the 3.11 stub
#   nvidia_pytriton.libs/              the server's bundled shared libraries
#   stub-env/                          venv for the python-backend stub: numpy<2 + onnxruntime
#   perf_analyzer/                     (--with-perf-analyzer) binary, lib symlinks, wrapper
#
# Re-running with everything present only checks and prints the paths (seconds).
#
# Usage: scripts/setup_triton.sh [--with-perf-analyzer]
# Env:   KMR_TRITON_HOME  cache folder          KMR_SETUP_PYTHON  host python 3.11 for the venv
#        KMR_STUB_ORT_VERSION  onnxruntime pinned into the stub env
set -euo pipefail

PYTRITON_VERSION="0.7.0"
TRITONCLIENT_PA_VERSION="2.51.0"
# onnxruntime 1.32.0 declares numpy>=1.21.6 and is verified below against numpy 1.26.
STUB_ORT_VERSION="${KMR_STUB_ORT_VERSION:-1.32.0}"
STUB_NUMPY_SPEC="numpy>=1.26,<2"

WITH_PA=0
for arg in "$@"; do
    case "$arg" in
        --with-perf-analyzer) WITH_PA=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "setup_triton.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${KMR_TRITON_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kmr-recommender/triton}"
DL="$HOME_DIR/downloads"
SERVER_ROOT="$HOME_DIR/pytriton/tritonserver"
SERVER_BIN="$SERVER_ROOT/bin/tritonserver"
BACKENDS="$SERVER_ROOT/backends"
LIBS="$HOME_DIR/nvidia_pytriton.libs"
STUB_ENV="$HOME_DIR/stub-env"
PA_DIR="$HOME_DIR/perf_analyzer"

log() { echo "[setup_triton] $*" >&2; }

pick_python() {
    # A host Python 3.11 to run pip and create the stub venv.
    local cand
    # Debian's own python3.11 first: its stdlib matches the libpython3.11 the stub links.
    for cand in "${KMR_SETUP_PYTHON:-}" /usr/bin/python3.11 "$PROJECT/.venv/bin/python" python3.11; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$cand"; return 0
        fi
    done
    echo "setup_triton.sh: no Python 3.11 found (set KMR_SETUP_PYTHON)" >&2
    return 1
}

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "apt-get install $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# Download wheel $1 (pip spec) into $DL unless a matching file ($2 glob) is already there.
fetch_wheel() {
    local spec="$1" glob="$2" found
    mkdir -p "$DL"
    found="$(compgen -G "$DL/$glob" | head -n1 || true)"
    if [ -z "$found" ]; then
        log "pip download --no-deps $spec"
        # The stub env's pip: Debian's python3.11 may come without pip.
        "$STUB_ENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DL" "$spec" >&2
        found="$(compgen -G "$DL/$glob" | head -n1)"
    fi
    echo "$found"
}

# Extract members of wheel $1 whose names start with any of the prefixes $3.. into $2,
# keeping paths. zipfile drops the exec bits; callers chmod what must run.
unzip_members() {
    local whl="$1" dest="$2"; shift 2
    "$PY" - "$whl" "$dest" "$@" <<'EOF'
import sys, zipfile
whl, dest, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
with zipfile.ZipFile(whl) as z:
    members = [m for m in z.namelist() if m.startswith(prefixes)]
    z.extractall(dest, members)
print(f"extracted {len(members)} files", file=sys.stderr)
EOF
}

PY="$(pick_python)"

# 1. The stub env: a small venv with numpy<2 (numpy 2 corrupts tensors in the stub) and
#    onnxruntime. The venv is recorded with a stamp of what was asked for.
STUB_STAMP="$STUB_ENV/.kmr-stub-env"
WANT_STAMP="onnxruntime==$STUB_ORT_VERSION $STUB_NUMPY_SPEC base=$(command -v "$PY")"
if [ ! -f "$STUB_STAMP" ] || [ "$(cat "$STUB_STAMP")" != "$WANT_STAMP" ]; then
    log "building the stub env in $STUB_ENV ($WANT_STAMP)"
    rm -rf "$STUB_ENV"
    if ! "$PY" -m venv "$STUB_ENV" 2>/dev/null; then
        rm -rf "$STUB_ENV"
        apt_install python3.11-venv
        "$PY" -m venv "$STUB_ENV"
    fi
    "$STUB_ENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --only-binary=:all: "$STUB_NUMPY_SPEC" "onnxruntime==$STUB_ORT_VERSION"
    # Verify: numpy 1.x, and onnxruntime runs a graph on numpy-1 arrays. The graph is a
    # 61-byte ONNX model (y = x * x, INT64, opset 13) serialized inline because the onnx
    # package is not part of the stub env.
    "$STUB_ENV/bin/python" - <<'EOF'
import numpy as np
import onnxruntime as ort
assert np.__version__.startswith("1."), np.__version__
model = bytes.fromhex(
    "080812003a310a0e0a01780a017812017922034d756c1201675a0d0a017812080a06080712020a00"
    "620d0a017912080a06080712020a0042040a00100d"
)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(y,) = sess.run(None, {"x": np.array([2, -3, 4], dtype=np.int64)})
assert y.tolist() == [4, 9, 16], y
print(f"stub env ok: numpy {np.__version__}, onnxruntime {ort.__version__}")
EOF
    echo "$WANT_STAMP" > "$STUB_STAMP"
fi
STUB_SITE="$(compgen -G "$STUB_ENV/lib/python3.11/site-packages" | head -n1)"

# 2. The server: nvidia-pytriton wheel -> $HOME_DIR.
MARKER="$HOME_DIR/.unpacked-nvidia-pytriton-$PYTRITON_VERSION"
if [ ! -f "$MARKER" ] || [ ! -x "$SERVER_BIN" ]; then
    WHL="$(fetch_wheel "nvidia-pytriton==$PYTRITON_VERSION" "nvidia_pytriton-$PYTRITON_VERSION-*.whl")"
    log "unpacking $(basename "$WHL") into $HOME_DIR"
    unzip_members "$WHL" "$HOME_DIR" pytriton/tritonserver/ nvidia_pytriton.libs/
    chmod +x "$SERVER_BIN" "$SERVER_ROOT"/python_backend_stubs/*/triton_python_backend_stub
    touch "$MARKER"
fi

# 3. The python-backend stub for Python 3.11 next to the python backend library.
STUB="$BACKENDS/python/triton_python_backend_stub"
if ! cmp -s "$SERVER_ROOT/python_backend_stubs/3.11/triton_python_backend_stub" "$STUB" ||
    [ ! -x "$STUB" ]; then
    log "installing the Python 3.11 stub into $BACKENDS/python/"
    cp "$SERVER_ROOT/python_backend_stubs/3.11/triton_python_backend_stub" "$STUB"
    chmod +x "$STUB"
fi

# 4. libpython3.11.so.1.0 must resolve for the stub.
if ldd "$STUB" | grep -q 'libpython3.11.so.1.0 => not found'; then
    apt_install libpython3.11
fi
if ldd "$STUB" | grep -q 'not found'; then
    echo "setup_triton.sh: unresolved libraries for the stub:" >&2
    ldd "$STUB" | grep 'not found' >&2
    exit 1
fi


# 5. Optional perf_analyzer from the tritonclient 2.51.0 wheel.
if [ "$WITH_PA" -eq 1 ]; then
    PA_BIN="$PA_DIR/tritonclient-$TRITONCLIENT_PA_VERSION.data/data/bin/perf_analyzer"
    PA_WRAPPER="$PA_DIR/perf_analyzer"
    if [ ! -x "$PA_BIN" ]; then
        PAWHL="$(fetch_wheel "tritonclient==$TRITONCLIENT_PA_VERSION" "tritonclient-$TRITONCLIENT_PA_VERSION-*.whl")"
        log "extracting perf_analyzer from $(basename "$PAWHL")"
        unzip_members "$PAWHL" "$PA_DIR" "tritonclient-$TRITONCLIENT_PA_VERSION.data/data/bin/perf_analyzer"
        chmod +x "$PA_BIN"
    fi
    # perf_analyzer wants the plain sonames; the server wheel ships hashed copies.
    mkdir -p "$PA_DIR/lib"
    link_once() {
        [ "$(readlink "$2" 2>/dev/null || true)" = "$1" ] || ln -sfn "$1" "$2"
    }
    link_once "$(compgen -G "$LIBS/libb64-*.so.0d" | head -n1)" "$PA_DIR/lib/libb64.so.0d"
    link_once "$(compgen -G "$LIBS/libcudart-*.so.12*" | head -n1)" "$PA_DIR/lib/libcudart.so.12"
    WRAPPER_TEXT="#!/usr/bin/env bash
# Generated by scripts/setup_triton.sh: perf_analyzer with its libraries resolved.
export LD_LIBRARY_PATH=\"$PA_DIR/lib:$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"
exec \"$PA_BIN\" \"\$@\""
    if [ ! -f "$PA_WRAPPER" ] || [ "$(cat "$PA_WRAPPER")" != "$WRAPPER_TEXT" ]; then
        printf '%s\n' "$WRAPPER_TEXT" > "$PA_WRAPPER"
        chmod +x "$PA_WRAPPER"
    fi
    if LD_LIBRARY_PATH="$PA_DIR/lib:$LIBS" ldd "$PA_BIN" | grep -q 'not found'; then
        echo "setup_triton.sh: unresolved libraries for perf_analyzer:" >&2
        LD_LIBRARY_PATH="$PA_DIR/lib:$LIBS" ldd "$PA_BIN" | grep 'not found' >&2
        exit 1
    fi
fi

echo "KMR_TRITON_HOME=$HOME_DIR"
echo "tritonserver=$SERVER_BIN"
echo "backend_directory=$BACKENDS"
echo "server_libs=$LIBS"
echo "python_backend_stub=$STUB"
echo "stub_env=$STUB_ENV"
echo "stub_site_packages=$STUB_SITE"
if [ "$WITH_PA" -eq 1 ]; then
    echo "perf_analyzer=$PA_WRAPPER"
fi
