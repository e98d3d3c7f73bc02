"""IVF retrieve graph vs our exact graph vs faiss IndexIVFFlat, one run, side by side.

Kinds: ``planted`` (items and users = one of C random centres * 3 + unit Gaussian noise)
and ``hard`` (anisotropic Gaussian, per-dimension std ~ 1/sqrt(i)^(1/2), i.e. variance
spectrum ~ 1/sqrt(i), no clusters). sqrt_dim similarity, k = 10, B = 1 and 64.
Our exact graph is the project's exported retrieve graph (`serving_graph` +
`convert_graph`); ours and faiss use the same nlist (`default_nlist`); nprobe for each
recall target is the smallest value that reaches it on the evaluation users (ours: from
the probe ranks of the exact items; faiss: a sweep). faiss runs with 2 threads, ORT with
its default (all cores). Usage: ``python benchmarks/bench_ivf.py [--items 1000000]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import (  # noqa: E402
    export_onnx,
    machine_info,
    markdown_table,
    median_ms,
    ort_session,
    write_results,
)
from export.onnx import ivf  # noqa: E402
from export.onnx.ivf_index import list_ranks, scoring_users  # noqa: E402

K, DIM, EVAL_USERS, TARGETS = 10, 64, 200, (0.95, 0.99)


def make_tables(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "planted":
        centres = rng.standard_normal((max(16, n // 500), DIM), dtype=np.float32) * 3
        def draw(m: int) -> np.ndarray:
            noise = rng.standard_normal((m, DIM), dtype=np.float32)
            return centres[rng.integers(len(centres), size=m)] + noise
        return draw(EVAL_USERS * 5), draw(n)
    scale = (1.0 / np.sqrt(np.arange(1, DIM + 1))) ** 0.5
    users = rng.standard_normal((EVAL_USERS * 5, DIM), dtype=np.float32) * scale
    return users.astype(np.float32), (rng.standard_normal((n, DIM), dtype=np.float32)
                                      * scale).astype(np.float32)


def timed(fn) -> dict:
    return median_ms(fn, repeats=200, warmup=3, max_seconds=8)


def our_nprobe(index, users, exact, target: float) -> int:
    ranks = np.sort(list_ranks(index, users, exact).ravel())
    return int(min(index.num_lists, ranks[int(np.ceil(target * ranks.size)) - 1] + 1))


def bench_ours(users, items, exact, tmp: Path) -> list[dict]:
    start = time.perf_counter()
    index = ivf.build_index(items, nlist=ivf.default_nlist(len(items)), normalization="sqrt_dim")
    proto = ivf.ivf_graph(index, users, k=K, nprobe=1, tables=False)
    ivf.save_ivf(proto, ivf.ivf_tables(index, users), tmp)
    build_s = time.perf_counter() - start
    sess = ort_session(tmp / "model.onnx")
    rows = []
    for target in TARGETS:
        p = our_nprobe(index, users[:EVAL_USERS], exact, target)
        def run(b: int, p=p):
            ids = np.arange(b) % EVAL_USERS
            return sess.run(None, {"user_id": ids, "exclude_item_ids": np.full((b, 1), -1),
                                   "nprobe": np.array([p])})
        found = np.concatenate([run(64)[0] if False else sess.run(None, {
            "user_id": np.arange(s, s + 50), "exclude_item_ids": np.full((50, 1), -1),
            "nprobe": np.array([p])})[0] for s in range(0, EVAL_USERS, 50)])
        rows.append({"method": f"ours IVF (target {target})", "nprobe": p,
                     "nlist": index.nlist, "num_lists": index.num_lists,
                     "block_size": index.block_size, "recall": ivf.recall_at_k(found, exact),
                     "build_s": round(build_s, 1), "B1": timed(lambda: run(1)),
                     "B64": timed(lambda: run(64))})
    return rows


def bench_exact(users, items, exact, tmp: Path) -> dict:
    from export.onnx.graphs import RecommenderWeights
    from kmr.layers import NormalizedDotProductSimilarity

    start = time.perf_counter()
    path = export_onnx(RecommenderWeights(users, items, NormalizedDotProductSimilarity(
        "sqrt_dim")), "retrieve", K, tmp)
    build_s = time.perf_counter() - start
    sess = ort_session(path)
    def run(b: int):
        return sess.run(None, {"user_id": np.arange(b) % EVAL_USERS,
                               "exclude_item_ids": np.full((b, 1), -1)})
    found = run(EVAL_USERS)[0]
    return {"method": "ours exact graph", "recall": ivf.recall_at_k(found, exact),
            "build_s": round(build_s, 1), "B1": timed(lambda: run(1)),
            "B64": timed(lambda: run(64))}


def bench_faiss(users, items, exact) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(2)
    q = scoring_users(users, "sqrt_dim")
    start = time.perf_counter()
    nlist = ivf.default_nlist(len(items))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    build_s = time.perf_counter() - start
    rows, probes = [], sorted({int(x) for x in np.geomspace(1, nlist, 40)})
    for target in TARGETS:
        for p in probes:
            index.nprobe = p
            recall = ivf.recall_at_k(index.search(q[:EVAL_USERS], K)[1], exact)
            if recall >= target:
                break
        rows.append({"method": f"faiss IVFFlat (target {target})", "nprobe": p, "nlist": nlist,
                     "recall": recall, "build_s": round(build_s, 1),
                     "B1": timed(lambda: index.search(q[:1], K)),
                     "B64": timed(lambda: index.search(q[:64], K))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="planted,hard")
    args = parser.parse_args()
    results = {"machine": machine_info(), "items": args.items, "dim": DIM, "k": K, "runs": {}}
    for kind in args.kinds.split(","):
        users, items = make_tables(kind, args.items)
        exact, _ = ivf.exact_topk(users, items, np.arange(EVAL_USERS), k=K,
                                  normalization="sqrt_dim")
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            rows = [bench_exact(users, items, exact, Path(d1))]
            rows += bench_ours(users, items, exact, Path(d2))
        rows += bench_faiss(users, items, exact)
        results["runs"][kind] = rows
        print(kind, [(r["method"], r["recall"], r["B1"]["median_ms"], r["B64"]["median_ms"])
                     for r in rows], flush=True)
        write(results)


def write(results: dict) -> None:
    table = []
    for kind, rows in results["runs"].items():
        exact = rows[0]
        for r in rows:
            table.append([kind, r["method"], r.get("nlist", "-"), r.get("num_lists", "-"),
                          r.get("nprobe", "-"), round(r["recall"], 4), r["B1"]["median_ms"],
                          round(exact["B1"]["median_ms"] / r["B1"]["median_ms"], 1),
                          r["B64"]["median_ms"], r["build_s"]])
    md = (f"# IVF retrieve graph, {results['items']:,} items x {DIM}, k={K}\n\n"
          + markdown_table(["kind", "method", "nlist", "lists", "nprobe", "recall@10",
                            "B=1 ms", "x exact (B=1)", "B=64 ms", "build s"], table))
    write_results("ivf", results, md)


if __name__ == "__main__":
    main()
