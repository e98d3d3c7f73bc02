"""Full-catalogue retrieval: our served ONNX graph vs faiss IndexFlatIP vs numpy, and sgemm peak.

Same embeddings, same k, same batch for every method. Reports median ms and achieved
GFLOP/s (``2 * B * N * D`` flops) next to this machine's sgemm peak (numpy float32 matmul
of large square matrices). Goals (issue "benchmarks that show where we stand"): the
served graph >= 1.5x faster than faiss flat search and >= 60% of sgemm peak.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: the kernel numpy runs is recorded (threadpoolctl).
If either variable is set, the sgemm peak and numpy baseline are measured again in a
child process with both unset, and both settings are reported.

Usage:
    .venv/bin/python benchmarks/bench_retrieval.py            # full: 100k and 1M x 64
    .venv/bin/python benchmarks/bench_retrieval.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    OPENBLAS_VARS,
    RESULTS_DIR,
    blas_info,
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

NAME = "retrieval"
K = 10
DIM = 64
NUM_USERS = 10_000


def sgemm_peak(size: int, repeats: int) -> dict[str, Any]:
    """Median GFLOP/s of a float32 ``size x size`` matmul with numpy (and its BLAS kernel)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    stats = median_ms(lambda: a @ b, repeats=repeats, warmup=2)
    gflops = 2 * size**3 / (stats["median_ms"] / 1000) / 1e9
    return {"size": size, **stats, "gflops": round(gflops, 1), "blas": blas_info(),
            "openblas_env": {v: os.environ.get(v) for v in OPENBLAS_VARS}}


def numpy_search(queries: np.ndarray, table_t: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Exact top-k with numpy: matmul, argpartition, then sort the k winners."""
    scores = queries @ table_t
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def _child_sgemm(size: int, repeats: int) -> dict[str, Any] | None:
    """Measures sgemm peak in a child process with the OPENBLAS variables unset."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    cmd = [sys.executable, __file__, "--sgemm-only", str(size), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_case(num_items: int, batch: int, repeats: int, folder: Path,
               max_seconds: float) -> dict[str, Any]:
    """Times ORT (served graph), faiss IndexFlatIP and numpy on one (N, B) case."""
    import faiss

    weights = random_weights(NUM_USERS, num_items, DIM, seed=1)
    path = export_onnx(weights, "retrieve", K, folder / f"retrieve_{num_items}")
    rng = np.random.default_rng(2)
    users = rng.integers(0, NUM_USERS, batch)
    # The served graph scales user rows by 1/sqrt(D) (the sqrt_dim similarity): give the
    # baselines the same queries so every method ranks the same scores.
    queries = np.ascontiguousarray(weights.users[users] / np.float32(np.sqrt(DIM)))
    items = weights.items
    flops = 2 * batch * num_items * DIM
    out: dict[str, Any] = {"num_items": num_items, "batch": batch, "dim": DIM, "k": K,
                           "gflop": flops / 1e9, "methods": {}}

    feed = {"user_id": users, "exclude_item_ids": np.zeros((batch, 0), np.int64)}
    ref_ids, ref_scores = numpy_search(queries, np.ascontiguousarray(items.T), K)
    for threads in (0, 1):
        session = ort_session(path, threads=threads)
        ids, scores = session.run(None, feed)
        label = "onnxruntime served graph" + (" (1 thread)" if threads == 1 else "")
        stats = median_ms(lambda s=session: s.run(None, feed), repeats=repeats,
                          max_seconds=max_seconds)
        stats["ids_match_numpy"] = bool((ids == ref_ids).all())
        out["methods"][label] = stats

    index = faiss.IndexFlatIP(DIM)
    index.add(items)
    f_scores, f_ids = index.search(queries, K)
    stats = median_ms(lambda: index.search(queries, K), repeats=repeats,
                      max_seconds=max_seconds)
    stats["ids_match_numpy"] = bool((f_ids == ref_ids).mean() > 0.99)
    out["methods"]["faiss IndexFlatIP"] = stats
    out["faiss_threads"] = faiss.omp_get_max_threads()

    table_t = np.ascontiguousarray(items.T)
    out["methods"]["numpy matmul+argpartition"] = median_ms(
        lambda: numpy_search(queries, table_t, K), repeats=repeats, max_seconds=max_seconds)
    out["methods"]["numpy matmul only"] = median_ms(
        lambda: queries @ table_t, repeats=repeats, max_seconds=max_seconds)
    for stats in out["methods"].values():
        stats["gflops"] = round(flops / (stats["median_ms"] / 1000) / 1e9, 1)
    ort_ms = out["methods"]["onnxruntime served graph"]["median_ms"]
    out["ort_speedup_vs_faiss"] = round(
        out["methods"]["faiss IndexFlatIP"]["median_ms"] / ort_ms, 2)
    return out


def _plot(cases: list[dict[str, Any]], peak: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"N={c['num_items']:,}\nB={c['batch']}" for c in cases]
    methods = list(cases[0]["methods"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, method in enumerate(methods):
        values = [c["methods"][method]["gflops"] for c in cases]
        ax.bar(np.arange(len(cases)) + i * width, values, width, label=method)
    ax.axhline(peak, color="k", linestyle="--", label=f"sgemm peak {peak:.0f}")
    ax.axhline(0.6 * peak, color="r", linestyle=":", label="goal: 60% of peak")
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2, labels)
    ax.set_ylabel("achieved GFLOP/s (2*B*N*D / time)")
    ax.set_title(f"Exact full-catalogue top-{K} retrieval, D={DIM}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sgemm-only", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.sgemm_only:
        print(json.dumps(sgemm_peak(args.sgemm_only, args.repeats or 5)))
        return 0

    start = machine_info()
    repeats = args.repeats or (3 if args.quick else 15)
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    batches = [1, 64]
    gemm_size = 1024 if args.quick else 4096
    peak = sgemm_peak(gemm_size, repeats=3 if args.quick else 7)
    peak_unset = None
    if any(os.environ.get(v) for v in OPENBLAS_VARS):
        peak_unset = _child_sgemm(gemm_size, 3 if args.quick else 7)
    cases = []
    with tempfile.TemporaryDirectory(prefix="kmr-bench-retrieval-") as folder:
        for num_items in sizes:
            for batch in batches:
                case = bench_case(num_items, batch, repeats, Path(folder),
                                  max_seconds=10 if args.quick else 60)
                cases.append(case)
                print(json.dumps({k: v for k, v in case.items() if k != "methods"}),
                      flush=True)
    peak_gflops = peak["gflops"]
    rows, goals = [], []
    for case in cases:
        for method, stats in case["methods"].items():
            rows.append([f"{case['num_items']:,}", case["batch"], method, stats["median_ms"],
                         stats["gflops"], f"{100 * stats['gflops'] / peak_gflops:.0f}%"])
        ort = case["methods"]["onnxruntime served graph"]
        goals.append({
            "num_items": case["num_items"], "batch": case["batch"],
            "speedup_vs_faiss": case["ort_speedup_vs_faiss"],
            "speedup_goal_met": case["ort_speedup_vs_faiss"] >= 1.5,
            "fraction_of_peak": round(ort["gflops"] / peak_gflops, 3),
            "peak_goal_met": ort["gflops"] >= 0.6 * peak_gflops,
        })
    end_load = loadavg()
    payload = {"benchmark": NAME, "quick": args.quick, "machine": start,
               "loadavg_end": end_load, "sgemm_peak": peak,
               "sgemm_peak_openblas_unset": peak_unset, "cases": cases, "goals": goals}
    md = [f"# Full-catalogue retrieval (k={K}, D={DIM})", "", machine_line(start, end_load), "",
          f"sgemm peak (numpy float32 {gemm_size}x{gemm_size} matmul, median): "
          f"**{peak_gflops:.0f} GFLOP/s**, BLAS "
          f"{[(b['internal_api'], b['architecture']) for b in peak['blas']]}, "
          f"OPENBLAS env {peak['openblas_env']}.", ""]
    if peak_unset:
        md += [f"With OPENBLAS_* unset: {peak_unset}", ""]
    md += [markdown_table(["items", "B", "method", "median ms", "GFLOP/s", "% of peak"], rows),
           "", "Goals (onnxruntime served graph, default threads):", "",
           markdown_table(["items", "B", "x faster than faiss (goal >= 1.5)", "met",
                           "fraction of sgemm peak (goal >= 0.6)", "met"],
                          [[f"{g['num_items']:,}", g["batch"], g["speedup_vs_faiss"],
                            g["speedup_goal_met"], g["fraction_of_peak"], g["peak_goal_met"]]
                           for g in goals])]
    write_results(NAME, payload, "\n".join(md), args.results_dir)
    _plot(cases, peak_gflops, args.results_dir / f"{NAME}.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
