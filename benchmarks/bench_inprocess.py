"""In-process latency: the serving computation as a Keras/TF ``tf.function`` vs onnxruntime.

Both run the same graph: `export.onnx.graphs.serving_graph` builds the ``tf.function``
(called directly with the tables as constant tensors, never ``model.predict``), and the
project's export (`export.onnx.convert.convert_graph`) turns that same function into the
``model.onnx`` that onnxruntime runs. Random-weight models, D=64, k=10.

Cases: rerank (B=1 and 64, N=100 candidates) and retrieve (B=1 and 64, 100k and 1M
items, no exclusions).

Usage:
    .venv/bin/python benchmarks/bench_inprocess.py            # full
    .venv/bin/python benchmarks/bench_inprocess.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    export_onnx,
    loadavg,
    machine_info,
    machine_line,
    markdown_table,
    median_ms,
    ort_session,
    random_weights,
    write_results,
)

NAME = "inprocess"
K = 10
DIM = 64
NUM_USERS = 10_000
CANDIDATES = 100


def _feeds(kind: str, batch: int, num_items: int, rng: np.random.Generator) -> dict[str, Any]:
    users = rng.integers(0, NUM_USERS, batch)
    if kind == "rerank":
        return {"user_id": users, "item_ids": rng.integers(0, num_items, (batch, CANDIDATES))}
    return {"user_id": users, "exclude_item_ids": np.zeros((batch, 0), np.int64)}


def bench_model(kind: str, num_items: int, batches: list[int], repeats: int, folder: Path,
                max_seconds: float) -> list[dict[str, Any]]:
    """Times the tf.function and onnxruntime on one exported graph for each batch size."""
    import tensorflow as tf

    from export.onnx.graphs import serving_graph

    weights = random_weights(NUM_USERS, num_items, DIM, seed=3)
    graph = serving_graph(weights, kind, K)
    path = export_onnx(weights, kind, K, folder / f"{kind}_{num_items}")
    session = ort_session(path)
    tables = [tf.constant(t.to_numpy()) for t in graph.tables]
    rng = np.random.default_rng(4)
    rows = []
    for batch in batches:
        feed = _feeds(kind, batch, num_items, rng)
        requests = [tf.constant(feed[s.name]) for s in graph.request_signature]

        def run_tf(requests: list[Any] = requests) -> Any:
            return graph.function(*requests, *tables)

        tf_out = {n: v.numpy() for n, v in run_tf().items()}
        ort_out = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, feed), strict=True))
        same_ids = bool((tf_out["top_item_ids"] == ort_out["top_item_ids"]).all())
        tf_stats = median_ms(run_tf, repeats=repeats, warmup=3, max_seconds=max_seconds)
        ort_stats = median_ms(lambda f=feed: session.run(None, f), repeats=repeats, warmup=3,
                              max_seconds=max_seconds)
        rows.append({"graph": kind, "num_items": num_items, "batch": batch,
                     "candidates": CANDIDATES if kind == "rerank" else None,
                     "tf_function": tf_stats, "onnxruntime": ort_stats,
                     "speedup_ort_vs_tf": round(tf_stats["median_ms"] / ort_stats["median_ms"],
                                                2),
                     "top_ids_equal": same_ids})
        print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)

    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['graph']}\nN={r['num_items']:,}\nB={r['batch']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(x - 0.2, [r["tf_function"]["median_ms"] for r in rows], 0.4, label="tf.function")
    ax.bar(x + 0.2, [r["onnxruntime"]["median_ms"] for r in rows], 0.4, label="onnxruntime")
    ax.set_yscale("log")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("median latency (ms, log)")
    ax.set_title(f"In-process latency, same serving graph (D={DIM}, k={K})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    start = machine_info()
    repeats = args.repeats or (5 if args.quick else 30)
    max_seconds = 5 if args.quick else 40
    rerank_items = 5_000 if args.quick else 100_000
    retrieve_sizes = [20_000] if args.quick else [100_000, 1_000_000]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kmr-bench-inprocess-") as folder:
        rows += bench_model("rerank", rerank_items, [1, 64], repeats, Path(folder), max_seconds)
        for n in retrieve_sizes:
            rows += bench_model("retrieve", n, [1, 64], repeats, Path(folder), max_seconds)
    end_load = loadavg()
    payload = {"benchmark": NAME, "quick": args.quick, "machine": start,
               "loadavg_end": end_load, "k": K, "dim": DIM, "rows": rows}
    table = markdown_table(
        ["graph", "items", "B", "tf.function ms", "onnxruntime ms", "ORT speed-up",
         "same top ids"],
        [[r["graph"] + (f" (N={r['candidates']})" if r["candidates"] else ""),
          f"{r['num_items']:,}", r["batch"], r["tf_function"]["median_ms"],
          r["onnxruntime"]["median_ms"], r["speedup_ort_vs_tf"], r["top_ids_equal"]]
         for r in rows])
    md = "\n".join([f"# In-process: tf.function vs onnxruntime (D={DIM}, k={K})", "",
                    machine_line(start, end_load), "",
                    "Medians; both with default threads (2 cores). Retrieve has no "
                    "exclusions.", "", table])
    write_results(NAME, payload, md, args.results_dir)
    _plot(rows, args.results_dir / f"{NAME}.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
