#!/usr/bin/env bash
# Set-up (idempotent) + the main job: train on the built-in synthetic data (or
# KMR_DATA=path/to/ratings.csv), export, serve on a local tritonserver, query, print.
# Extra arguments go to `kmr-export demo` (see `--help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/kmr-export" demo "$@"
