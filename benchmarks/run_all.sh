#!/usr/bin/env bash
# Runs the three "where we stand" benchmarks in sequence (full mode unless --quick):
#   1. bench_inprocess.py  tf.function vs onnxruntime on the exported graphs
#   2. bench_retrieval.py  served retrieve graph vs faiss IndexFlatIP vs numpy, sgemm peak
#   3. bench_served.py     local Triton over gRPC (perf_analyzer + asyncio loadgen) vs in-process
# Results: benchmarks/results/{inprocess,retrieval,served}.{json,md,png}
# Needs: .venv with the [bench] extra; scripts/setup_triton.sh --with-perf-analyzer for 3.
# Usage: benchmarks/run_all.sh [--quick]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
PY="$ROOT/.venv/bin/python"
for bench in inprocess retrieval served; do
    echo "== bench_$bench.py $* (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$PY" "benchmarks/bench_$bench.py" "$@"
done
