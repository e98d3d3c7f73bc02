"""Served retrieve graph (onnxruntime) vs a plain numpy matmul at 1M items x D=64, B=64.

Checks that the exported graph adds little over the unavoidable ``[B, D] x [D, N]``
product: no per-inference transpose or copy of the item table.

Usage:
    .venv/bin/python benchmarks/bench_retrieve_latency.py [--items 1000000] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from export.onnx_convert import convert_graph, load_session
from export.serving_graphs import RecommenderWeights, serving_graph
from kmr import contract
from kmr.layers import NormalizedDotProductSimilarity


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = RecommenderWeights(
        rng.normal(size=(args.users, args.dim)).astype(np.float32),
        rng.normal(size=(args.items, args.dim)).astype(np.float32),
        NormalizedDotProductSimilarity(),
    )
    graph = serving_graph(weights, contract.GRAPH_RETRIEVE, args.k)
    with tempfile.TemporaryDirectory() as folder:
        session = load_session(convert_graph(graph, folder).path)
        users = rng.integers(0, args.users, args.batch)
        exclude = rng.integers(0, args.items, (args.batch, 50))
        feed = {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude}
        ort_ms = _median_ms(lambda: session.run(None, feed), args.repeats)
        no_excl = {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude[:, :0]}
        ort_plain_ms = _median_ms(lambda: session.run(None, no_excl), args.repeats)
    table_t = np.ascontiguousarray(weights.items.T)
    u = weights.users[users]
    numpy_ms = _median_ms(lambda: u @ table_t, args.repeats)
    flops = 2 * args.batch * args.items * args.dim
    result = {
        "items": args.items, "dim": args.dim, "batch": args.batch, "k": args.k,
        "ort_retrieve_ms_exclude50": round(ort_ms, 2),
        "ort_retrieve_ms_no_exclude": round(ort_plain_ms, 2),
        "numpy_matmul_ms": round(numpy_ms, 2),
        "ort_over_numpy": round(ort_ms / numpy_ms, 2),
        "ort_gflops": round(flops / ort_ms / 1e6, 1),
        "numpy_gflops": round(flops / numpy_ms / 1e6, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "retrieve_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
