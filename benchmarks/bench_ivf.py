"""Retrieval indexes side by side in one run: our exact, int8 and IVF graphs vs numpy/faiss.

Kinds of embeddings (D = 64, sqrt_dim similarity, k = 10, B = 1 and 64):

* ``planted``: items and users = one of N/500 random centres * 3 + unit Gaussian noise;
* ``hard``: anisotropic Gaussian, variance spectrum ~ 1/sqrt(i), no clusters;
* ``isotropic``: standard Gaussian (the worst case for any partitioning; reported only);
* ``trained``: the embeddings of a model trained on MovieLens latest-small (its own
  size, ~9.7k items; ``--items`` does not apply).

Methods: our exported graphs as ``kmr-export export`` builds them (exact: tf2onnx
graph; ``int8``: `export.onnx.int8`, default rescore chosen by the export;
``ivf``: `export.onnx.ivf` with the export's default nlist, nprobe per recall target
= the smallest reaching it on the evaluation users, sent per row), numpy (matmul +
argpartition), faiss IndexFlatIP, IndexIVFFlat (same nlist; nprobe swept) and
IndexHNSWFlat (M = 32; efSearch swept; skipped above 2M items: its build alone takes
longer than the rest of the run here). Recall@10 against exact numpy top-10 on 200
users. faiss runs with 2 threads, onnxruntime and numpy with their defaults (all cores).
Usage: ``python benchmarks/bench_ivf.py [--items 1000000] [--kinds planted,hard] [--quick]``.
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
from export.onnx.graphs import RecommenderWeights  # noqa: E402
from export.onnx.index_convert import IndexSettings, convert_index  # noqa: E402
from export.onnx.ivf_index import list_ranks, scoring_users  # noqa: E402
from kmr.layers import NormalizedDotProductSimilarity  # noqa: E402

K, DIM, EVAL_USERS, TARGETS = 10, 64, 200, (0.95, 0.99)
HNSW_MAX_ITEMS = 2_000_000
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-latest-small"


def make_tables(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "trained":
        return trained_tables()
    if kind == "planted":
        centres = rng.standard_normal((max(16, n // 500), DIM), dtype=np.float32) * 3

        def draw(m: int) -> np.ndarray:
            noise = rng.standard_normal((m, DIM), dtype=np.float32)
            return centres[rng.integers(len(centres), size=m)] + noise
        return draw(EVAL_USERS * 5), draw(n)
    scale = (1.0 / np.sqrt(np.arange(1, DIM + 1))) ** 0.5 if kind == "hard" else np.ones(DIM)
    users = rng.standard_normal((EVAL_USERS * 5, DIM), dtype=np.float32) * scale
    items = rng.standard_normal((n, DIM), dtype=np.float32) * scale
    return users.astype(np.float32), items.astype(np.float32)


def trained_tables() -> tuple[np.ndarray, np.ndarray]:
    from kmr.data.files import load_interactions
    from kmr.models import recommender_parts
    from kmr.training.fit import TrainSettings, fit_recommender

    fit = fit_recommender(load_interactions(DATA / "ratings.csv"),
                          TrainSettings(embedding_dim=DIM, epochs=10,
                                        objective="sampled_softmax"), verbose=0)
    emb = recommender_parts(fit.model).embedding
    return (np.asarray(emb.user_embeddings.numpy(), np.float32),
            np.asarray(emb.item_embeddings.numpy(), np.float32))


def timed(fn) -> dict:
    return median_ms(fn, repeats=200, warmup=3, max_seconds=8)


def _weights(users: np.ndarray, items: np.ndarray) -> RecommenderWeights:
    return RecommenderWeights(users, items, NormalizedDotProductSimilarity("sqrt_dim"))


def _feed(b: int, setting: str | None = None, value: int = 0) -> dict:
    feed = {"user_id": np.arange(b) % EVAL_USERS, "exclude_item_ids": np.full((b, 1), -1)}
    if setting:
        feed[setting] = np.full(b, value, np.int64)
    return feed


def _found(sess, setting: str | None = None, value: int = 0) -> np.ndarray:
    return np.concatenate([sess.run(["top_item_ids"], {**_feed(50, setting, value),
                                                       "user_id": np.arange(s, s + 50)})[0]
                           for s in range(0, EVAL_USERS, 50)])


def _row(method: str, sess, exact, build_s: float, setting: str | None = None,
         value: int = 0, **extra) -> dict:
    found = _found(sess, setting, value)
    return {"method": method, "recall": ivf.recall_at_k(found, exact),
            "rows_equal": float((found == exact).all(axis=1).mean()),
            "build_s": round(build_s, 1), **extra,
            "B1": timed(lambda: sess.run(None, _feed(1, setting, value))),
            "B64": timed(lambda: sess.run(None, _feed(64, setting, value)))}


def bench_exact(users, items, exact, tmp: Path) -> dict:
    start = time.perf_counter()
    path = export_onnx(_weights(users, items), "retrieve", K, tmp)
    return _row("ours exact graph", ort_session(path), exact, time.perf_counter() - start)


def bench_int8(users, items, exact, tmp: Path) -> dict:
    start = time.perf_counter()
    build = convert_index("int8", _weights(users, items), tmp, k=K)
    return _row(f"ours int8 graph (rescore {build.default})", ort_session(build.converted.path),
                exact, time.perf_counter() - start, "rescore", 0, nprobe=build.default)


def bench_ours_ivf(users, items, exact, tmp: Path) -> list[dict]:
    start = time.perf_counter()
    build = convert_index("ivf", _weights(users, items), tmp, k=K,
                          settings=IndexSettings(nprobe=1))
    build_s = time.perf_counter() - start
    index = build.index
    sess = ort_session(build.converted.path)
    ranks = np.sort(list_ranks(index, users[:EVAL_USERS], exact).ravel())
    rows = []
    for target in TARGETS:
        p = int(min(index.num_lists, ranks[int(np.ceil(target * ranks.size)) - 1] + 1))
        rows.append(_row(f"ours IVF (target {target})", sess, exact, build_s, "nprobe", p,
                         nprobe=p, nlist=index.nlist, num_lists=index.num_lists))
    return rows


def bench_numpy(users, items, exact) -> dict:
    q, table_t = scoring_users(users, "sqrt_dim"), np.ascontiguousarray(items.T)

    def search(b: int) -> np.ndarray:
        return _np_rows(q[np.arange(b) % EVAL_USERS] @ table_t)
    found = np.concatenate([_np_rows(q[s:s + 50] @ table_t) for s in range(0, EVAL_USERS, 50)])
    return {"method": "numpy (matmul + argpartition)", "recall": ivf.recall_at_k(found, exact),
            "build_s": 0.0, "B1": timed(lambda: search(1)), "B64": timed(lambda: search(64))}


def _np_rows(s: np.ndarray) -> np.ndarray:
    part = np.argpartition(-s, K, axis=1)[:, :K]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(s, part, 1), 1), 1)


def _faiss_row(method: str, index, q, exact, build_s: float, **extra) -> dict:
    return {"method": method, "recall": ivf.recall_at_k(index.search(q[:EVAL_USERS], K)[1],
                                                        exact),
            "build_s": round(build_s, 1), **extra,
            "B1": timed(lambda: index.search(q[:1], K)),
            "B64": timed(lambda: index.search(q[:64], K))}


def _sweep(index, attr: str, values: list[int], q, exact, target: float) -> int:
    for value in values:
        setattr(index, attr, value) if attr == "nprobe" else setattr(index.hnsw, attr, value)
        if ivf.recall_at_k(index.search(q[:EVAL_USERS], K)[1], exact) >= target:
            return value
    return values[-1]


def bench_faiss(users, items, exact) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(2)
    q = scoring_users(users, "sqrt_dim")
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(items)
    rows = [_faiss_row("faiss IndexFlatIP", flat, q, exact, time.perf_counter() - start)]
    nlist = ivf.default_nlist(len(items))
    start = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    build_s = time.perf_counter() - start
    probes = sorted({int(x) for x in np.geomspace(1, nlist, 40)})
    for target in TARGETS:
        p = _sweep(index, "nprobe", probes, q, exact, target)
        rows.append(_faiss_row(f"faiss IVFFlat (target {target})", index, q, exact, build_s,
                               nprobe=p, nlist=nlist))
    if len(items) <= HNSW_MAX_ITEMS:
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(items)
        build_s = time.perf_counter() - start
        efs = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
        for target in TARGETS:
            ef = _sweep(hnsw, "efSearch", efs, q, exact, target)
            rows.append(_faiss_row(f"faiss HNSWFlat M=32 (target {target})", hnsw, q, exact,
                                   build_s, nprobe=f"ef {ef}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="planted,hard,isotropic")
    parser.add_argument("--name", default="ivf", help="results/<name>.json|md")
    parser.add_argument("--quick", action="store_true",
                        help="20k items, planted + hard, results/ivf_quick.*: checks it works")
    args = parser.parse_args()
    if args.quick:
        args.items, args.kinds, args.name = 20_000, "planted,hard", "ivf_quick"
    results = {"machine": machine_info(), "items": args.items, "dim": DIM, "k": K, "runs": {}}
    for kind in args.kinds.split(","):
        users, items = make_tables(kind, args.items)
        exact, _ = ivf.exact_topk(users, items, np.arange(EVAL_USERS), k=K,
                                  normalization="sqrt_dim")
        rows = []
        for bench in (bench_exact, bench_int8, bench_ours_ivf):
            with tempfile.TemporaryDirectory() as d:
                out = bench(users, items, exact, Path(d))
            rows += out if isinstance(out, list) else [out]
        rows += [bench_numpy(users, items, exact), *bench_faiss(users, items, exact)]
        results["runs"][f"{kind} ({len(items):,} items)"] = rows
        print(kind, [(r["method"], round(r["recall"], 3), r["B1"]["median_ms"],
                      r["B64"]["median_ms"]) for r in rows], flush=True)
        write(results, args.name)
        del users, items


def write(results: dict, name: str) -> None:
    table = []
    for kind, rows in results["runs"].items():
        exact = rows[0]
        for r in rows:
            table.append([kind, r["method"], r.get("nlist", "-"), r.get("num_lists", "-"),
                          r.get("nprobe", "-"), round(r["recall"], 4),
                          r.get("rows_equal", "-"), r["B1"]["median_ms"],
                          round(exact["B1"]["median_ms"] / r["B1"]["median_ms"], 1),
                          r["B64"]["median_ms"],
                          round(exact["B64"]["median_ms"] / r["B64"]["median_ms"], 1),
                          r["build_s"]])
    md = (f"# Retrieval indexes, {DIM}-d, k={K}, one run side by side\n\n"
          "Recall@10 vs exact numpy top-10 on 200 users; `rows equal`: share of those "
          "users whose 10 ids equal exact. `x exact`: our exact graph's median / this "
          "method's median (same run). Machine: "
          f"{results['machine'].get('Model name', '?')}, {results['machine']['cpu_count']} "
          f"cores, load {results['machine']['loadavg']}.\n\n"
          + markdown_table(["kind", "method", "nlist", "lists", "nprobe / rescore / ef",
                            "recall@10", "rows equal", "B=1 ms", "x exact", "B=64 ms",
                            "x exact", "build s"], table))
    write_results(name, results, md)


if __name__ == "__main__":
    main()
