"""Our trained model vs the `implicit` library's ALS and BPR on MovieLens latest-small.

Same data, same split, same evaluation code for every model:
- positives: rating >= 4; test: each user's latest positive (leave-last-out);
- tuning: a validation split carved the same way from the training part (the test
  positives are never seen while tuning); each model gets the same number of grid
  points; ours also picks its epoch count from its per-epoch validation curve;
- final: each model refit on the full training part with its best setting, then
  ranked on the test split (training items excluded), popularity alongside.

Writes benchmarks/results/train_vs_implicit.json and .md.

Run: .venv/bin/python benchmarks/bench_train_vs_implicit.py
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns otherwise (own threads)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from kmr.data.files import load_interactions  # noqa: E402
from kmr.data.interactions import Interactions  # noqa: E402
from kmr.training.evaluation import (  # noqa: E402
    HoldoutSplit,
    RankingMetrics,
    evaluate_ranking,
    holdout_split,
    popularity_scorer,
)
from kmr.training.fit import TrainSettings, embedding_scorer, fit_recommender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/movielens-latest-small/ratings.csv"
RESULTS = ROOT / "benchmarks/results"
SEED = 0

# Eight grid points each.
OURS_BASE = TrainSettings(epochs=20, seed=SEED, objective="sampled_softmax")
OURS_GRID = {
    "embedding_dim": [64, 128],
    "temperature": [0.1, 0.2],
    "l2_reg": [1e-4, 1e-3],
}
ALS_GRID = {"factors": [64, 128], "regularization": [0.05, 0.5], "alpha": [5.0, 20.0]}
BPR_GRID = {"factors": [64, 128], "learning_rate": [0.01, 0.05], "regularization": [0.01, 0.001]}
ALS_ITERATIONS = 20
BPR_ITERATIONS = 100


def main() -> int:
    data = load_interactions(DATA)
    split = holdout_split(data, seed=SEED)
    validation = holdout_split(split.train, seed=SEED)
    results: dict[str, dict] = {}

    pop = evaluate_ranking(popularity_scorer(split.train), split)
    results["popularity"] = _row(pop, 0.0, {})

    best, tuning = _tune_ours(validation)
    final = replace(OURS_BASE, **best)
    fit = fit_recommender(split.train, final, verbose=0)
    metrics = evaluate_ranking(embedding_scorer(fit.model), split)
    results["kmr (ours)"] = _row(metrics, fit.seconds, best, tuning, objective=fit.objective)

    for name, grid, build in (
        ("implicit ALS", ALS_GRID, _als),
        ("implicit BPR", BPR_GRID, _bpr),
    ):
        best, tuning = _tune_implicit(validation, grid, build)
        metrics, seconds = _fit_eval_implicit(split, build(**best))
        results[name] = _row(metrics, seconds, best, tuning)

    report = {
        "data": str(DATA.name),
        "positives": len(data),
        "users": data.num_users,
        "items": data.num_items,
        "split": "leave-last-out by timestamp; validation carved the same way from train",
        "results": results,
        "machine": _machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_vs_implicit.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "train_vs_implicit.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _tune_ours(validation: HoldoutSplit) -> tuple[dict, list[dict]]:
    trials = []
    for values in itertools.product(*OURS_GRID.values()):
        params = dict(zip(OURS_GRID, values, strict=True))
        fit = fit_recommender(
            validation.train, replace(OURS_BASE, **params), validation=validation, verbose=0
        )
        curve = [m.recall for m in fit.validation]
        epoch = int(np.argmax(curve)) + 1
        trials.append({**params, "epochs": epoch, "val_recall@10": curve[epoch - 1]})
        print("ours", trials[-1], flush=True)
    best = max(trials, key=lambda t: t["val_recall@10"])
    return {k: v for k, v in best.items() if k != "val_recall@10"}, trials


def _tune_implicit(validation: HoldoutSplit, grid: dict, build) -> tuple[dict, list[dict]]:
    trials = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        metrics, _ = _fit_eval_implicit(validation, build(**params))
        trials.append({**params, "val_recall@10": metrics.recall})
        print(build.__name__, trials[-1], flush=True)
    best = max(trials, key=lambda t: t["val_recall@10"])
    return {k: v for k, v in best.items() if k != "val_recall@10"}, trials


def _als(**params):
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(
        iterations=ALS_ITERATIONS, random_state=SEED, calculate_training_loss=False, **params
    )


def _bpr(**params):
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    return BayesianPersonalizedRanking(iterations=BPR_ITERATIONS, random_state=SEED, **params)


def _fit_eval_implicit(split: HoldoutSplit, model) -> tuple[RankingMetrics, float]:
    start = time.perf_counter()
    model.fit(_user_items(split.train), show_progress=False)
    seconds = time.perf_counter() - start
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    metrics = evaluate_ranking(lambda u: users[u] @ items.T, split)
    return metrics, seconds


def _user_items(train: Interactions) -> sp.csr_matrix:
    ones = np.ones(len(train), dtype=np.float32)
    shape = (train.num_users, train.num_items)
    return sp.csr_matrix((ones, (train.users, train.items)), shape=shape)


def _row(metrics: RankingMetrics, seconds: float, params: dict, tuning=None, **extra) -> dict:
    row = {
        "recall@10": round(metrics.recall, 4),
        "ndcg@10": round(metrics.ndcg, 4),
        "hit_rate@10": round(metrics.hit_rate, 4),
        "test_users": metrics.num_users,
        "train_seconds": round(seconds, 2),
        "best_params": params,
        **extra,
    }
    if tuning is not None:
        row["tuning"] = tuning
    return row


def _machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import implicit
    import keras
    import tensorflow as tf

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "implicit": implicit.__version__,
        "numpy": np.__version__,
    }


def _markdown(report: dict) -> str:
    lines = [
        "# kmr vs implicit on MovieLens latest-small",
        "",
        f"{report['positives']} positives (rating >= 4), {report['users']} users, "
        f"{report['items']} items; {report['split']}. Each model tuned on the validation "
        "split with 8 grid points, refit on the training part, tested once.",
        "",
        "| model | Recall@10 | NDCG@10 | HitRate@10 | train seconds | best params |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        params = ", ".join(f"{k}={v}" for k, v in r["best_params"].items())
        lines.append(
            f"| {name} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | {r['hit_rate@10']:.4f} "
            f"| {r['train_seconds']} | {params} |"
        )
    m = report["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; Python {m['python']}, "
        f"Keras {m['keras']}, TensorFlow {m['tensorflow']}, implicit {m['implicit']}, "
        f"numpy {m['numpy']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
