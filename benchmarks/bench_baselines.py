"""Ours (default flags) vs EASE, tuned implicit ALS, tuned BPR and popularity on MovieLens.

Protocol (the same for every model):
- positives: rating >= 4; test: each user's latest positive by time (leave-last-out);
- tuning: a validation split carved the same way from the training part (the test
  positives are never seen); the score of a setting is mean(HR@10, NDCG@10);
- final: each baseline refit on the whole training part with its best setting, ours
  trained there with the default `TrainSettings()` (no per-dataset tuning) the way
  `train` does: the epoch count chosen by early stopping on that validation split, each
  ranked once on the test split, training items excluded, full catalogue;
- reported: HR@10 (= Recall@10: one held-out item per user) and NDCG@10 with
  standard errors over users, and a paired per-user comparison of ours vs each model.

Writes benchmarks/results/baselines.json and .md.

Run: .venv/bin/python benchmarks/bench_baselines.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit runs its own threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _baselines import fit_als, fit_bpr, fit_ease  # noqa: E402
from _common import machine_info  # noqa: E402

from kmr.data.files import load_interactions  # noqa: E402
from kmr.training.evaluation import (  # noqa: E402
    HoldoutSplit,
    PerUserRanking,
    Scorer,
    holdout_split,
    popularity_scorer,
    ranking_per_user,
)
from kmr.training.fit import (  # noqa: E402
    EpochChoice,
    FitResult,
    TrainSettings,
    embedding_scorer,
    fit_recommender,
    with_chosen_epochs,
)
from kmr.training.settings import settings_to_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/movielens-latest-small/ratings.csv"
RESULTS = ROOT / "benchmarks/results"

GRIDS: dict[str, dict[str, list]] = {
    "EASE": {"l2": [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]},
    "implicit ALS": {
        "factors": [64, 128, 256],
        "regularization": [0.01, 0.1, 1.0],
        "alpha": [1.0, 5.0, 20.0],
    },
    "implicit BPR": {
        "factors": [64, 128],
        "learning_rate": [0.01, 0.05, 0.1],
        "regularization": [0.01, 0.001],
    },
}
FITTERS: dict[str, Callable[..., Scorer]] = {
    "EASE": fit_ease, "implicit ALS": fit_als, "implicit BPR": fit_bpr,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of our model (the first is the one compared)")
    parser.add_argument("--min-rating", type=float, default=4.0,
                        help="ratings >= this are positives (the protocol: 4)")
    parser.add_argument("--out", default="baselines")
    args = parser.parse_args()
    data = load_interactions(DATA, rating_threshold=args.min_rating)
    split = holdout_split(data)
    validation = holdout_split(split.train)
    rows: dict[str, dict] = {}
    per_user: dict[str, PerUserRanking] = {}

    # Ours at the defaults (the closed-form objective: every seed gives the same tables
    # on data this small), then the gradient family's default for context.
    for label, overrides in (("ours", {}),
                             ("ours sampled softmax", {"objective": "sampled_softmax"})):
        more_rows, more_per_user = _ours((split, validation), label, overrides, args.seeds)
        rows.update(more_rows)
        per_user.update(more_per_user)
    for name, grid in GRIDS.items():
        best, tuning = _tune(FITTERS[name], grid, validation)
        start = time.perf_counter()
        scorer = FITTERS[name](split.train, **best)
        seconds = time.perf_counter() - start
        per_user[name] = ranking_per_user(scorer, split)
        chosen = max(tuning, key=lambda t: t["score"])
        rows[name] = {"seconds": round(seconds, 2), "params": best, "tuning": tuning,
                      "validation": {"hr@10": chosen["val_hr@10"],
                                     "ndcg@10": chosen["val_ndcg@10"]}}
        print(name, best, _summary(per_user[name]), flush=True)
    per_user["popularity"] = ranking_per_user(popularity_scorer(split.train), split)
    rows["popularity"] = {"seconds": 0.0, "params": {}}

    # The seed mean is what the training procedure gives in expectation: compare that.
    ours = next((n for n in per_user if n.startswith("ours, mean")), next(iter(per_user)))
    for name, r in rows.items():
        r.update(_summary(per_user[name]))
        if name != ours:
            r["paired_vs_ours"] = paired(per_user[ours], per_user[name])
    report = {"data": DATA.name, "min_rating": args.min_rating, "positives": len(data),
              "users": data.num_users, "items": data.num_items, "compared": ours,
              "results": rows, "machine": machine_info()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


class TrainLikeFit(NamedTuple):
    """One fit of ours as `train` does it, and its ranking of the held-out positives."""

    settings: TrainSettings
    choice: EpochChoice | None
    fit: FitResult
    ranking: PerUserRanking


def fit_as_train(split: HoldoutSplit, overrides: dict, seed: int) -> TrainLikeFit:
    """Ours on ``split.train`` as `train` fits (epoch count chosen on a split carved from
    it), scored on ``split``'s held-out positives."""
    settings, choice = with_chosen_epochs(split.train,
                                          replace(TrainSettings(seed=seed), **overrides))
    fit = fit_recommender(split.train, settings, verbose=0)
    return TrainLikeFit(settings, choice, fit,
                        ranking_per_user(embedding_scorer(fit.model), split))


def _ours(splits: tuple[HoldoutSplit, HoldoutSplit], label: str, overrides: dict,
          seeds: list[int]) -> tuple[dict[str, dict], dict[str, PerUserRanking]]:
    """Per seed, fits as `train` does (epoch count chosen on a split carved from the
    training part) on the test split's training part, scored on its test positives, and
    the same on the validation split (its ``validation`` entry); plus the seed mean."""
    split, validation = splits
    rows: dict[str, dict] = {}
    per_user: dict[str, PerUserRanking] = {}
    on_validation = []
    for seed in seeds:
        name = f"{label} (default flags)" if seed == seeds[0] else f"{label}, seed {seed}"
        ours = fit_as_train(split, overrides, seed)
        per_user[name] = ours.ranking
        seconds = ours.fit.seconds + (ours.choice.seconds if ours.choice is not None else 0.0)
        on_validation.append(fit_as_train(validation, overrides, seed).ranking)
        rows[name] = {"seconds": round(seconds, 2), "params": settings_to_dict(ours.settings),
                      "interactions_per_second": round(ours.fit.interactions_per_second),
                      "validation": _summary(on_validation[-1])}
        print(name, _summary(per_user[name]), flush=True)
    if len(seeds) > 1:
        name = f"{label}, mean of {len(seeds)} seeds"
        per_user[name] = seed_mean(list(per_user.values()))
        rows[name] = {"seconds": round(float(np.mean([r["seconds"] for r in rows.values()])),
                                       2),
                      "params": {"defaults": True, **overrides},
                      "validation": _summary(seed_mean(on_validation))}
    return rows, per_user


def _tune(fitter: Callable[..., Scorer], grid: dict, validation: HoldoutSplit):
    trials = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        result = ranking_per_user(fitter(validation.train, **params), validation)
        score = (result.hit_rate.mean() + result.ndcg.mean()) / 2
        trials.append({**params, "val_hr@10": round(float(result.hit_rate.mean()), 4),
                       "val_ndcg@10": round(float(result.ndcg.mean()), 4),
                       "score": float(score)})
    best = max(trials, key=lambda t: t["score"])
    return {k: best[k] for k in grid}, trials


def seed_mean(runs: list[PerUserRanking]) -> PerUserRanking:
    """Each user's metrics averaged over fits with different seeds.

    Example:
        >>> a = PerUserRanking(np.arange(2), *([np.array([1.0, 0.0])] * 3))
        >>> b = PerUserRanking(np.arange(2), *([np.array([0.0, 0.0])] * 3))
        >>> seed_mean([a, b]).hit_rate.tolist()
        [0.5, 0.0]
    """
    for run in runs:
        assert np.array_equal(run.users, runs[0].users)
    return PerUserRanking(
        runs[0].users,
        *(np.mean([getattr(r, key) for r in runs], axis=0)
          for key in ("recall", "ndcg", "hit_rate")),
    )


def _summary(result: PerUserRanking) -> dict[str, float]:
    n = len(result.users)
    return {
        "hr@10": round(float(result.hit_rate.mean()), 4),
        "hr@10_se": round(float(result.hit_rate.std(ddof=1) / np.sqrt(n)), 4),
        "ndcg@10": round(float(result.ndcg.mean()), 4),
        "ndcg@10_se": round(float(result.ndcg.std(ddof=1) / np.sqrt(n)), 4),
        "users": n,
    }


def paired(ours: PerUserRanking, other: PerUserRanking) -> dict[str, float]:
    """Per-user differences ours - other: mean, standard error, paired t-test p-value.

    Example:
        >>> a = PerUserRanking(np.arange(4), *([np.array([1.0, 0, 1, 1])] * 3))
        >>> b = PerUserRanking(np.arange(4), *([np.array([0.0, 0, 1, 0])] * 3))
        >>> paired(a, b)["hr@10_diff"], paired(a, b)["hr@10_wins_losses"]
        (0.5, [2, 0])
    """
    from scipy import stats

    assert np.array_equal(ours.users, other.users)
    out: dict[str, object] = {}
    for metric, key in (("hr@10", "hit_rate"), ("ndcg@10", "ndcg")):
        diff = getattr(ours, key) - getattr(other, key)
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        p = stats.ttest_rel(getattr(ours, key), getattr(other, key)).pvalue if se > 0 else 1.0
        out[f"{metric}_diff"] = round(float(diff.mean()), 4)
        out[f"{metric}_diff_se"] = round(float(se), 4)
        out[f"{metric}_p"] = round(float(p), 4)
        out[f"{metric}_wins_losses"] = [int((diff > 0).sum()), int((diff < 0).sum())]
    return out


def markdown(report: dict) -> str:
    """The results table (± is one standard error over users)."""
    lines = [
        "# Ours vs classical baselines on MovieLens latest-small",
        "",
        f"{report['positives']} positives (rating >= {report.get('min_rating', 4.0):g}), "
        f"{report['users']} users, "
        f"{report['items']} items. Test: each user's latest positive; full catalogue, "
        "training items excluded; baselines tuned on a validation split carved from the "
        "training part, refit on it, scored once; ours: default flags, no tuning. "
        "± = one standard error over users; paired = "
        f"{report['compared']} minus that model, per user (mean ± SE, paired t-test p; "
        "the seed mean averages each user's metrics over the seeds' fits). Validation: "
        "the same models on the validation split (each user's latest training positive); "
        "a baseline's figure there is the best of its tuning grid on that split "
        "(optimistic: chosen on it), ours fit as `train` does.",
        "",
        "| model | HR@10 | NDCG@10 | paired HR@10 diff (p) | paired NDCG@10 diff (p) "
        "| validation HR@10 / NDCG@10 | train s | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        pair = r.get("paired_vs_ours")
        hr_d = f"{pair['hr@10_diff']:+.4f} ± {pair['hr@10_diff_se']:.4f} ({pair['hr@10_p']:.2f})" \
            if pair else "-"
        nd_d = f"{pair['ndcg@10_diff']:+.4f} ± {pair['ndcg@10_diff_se']:.4f} " \
            f"({pair['ndcg@10_p']:.2f})" if pair else "-"
        params = _ours_params(r["params"]) if name.startswith("ours") else r["params"]
        lines.append(
            f"| {name} | {r['hr@10']:.4f} ± {r['hr@10_se']:.4f} | {r['ndcg@10']:.4f} ± "
            f"{r['ndcg@10_se']:.4f} | {hr_d} | {nd_d} | {_validation(r)} | {r['seconds']} "
            f"| {params} |"
        )
    m = report["machine"]
    lines += ["", f"Machine: {m.get('Model name', '?')}, {m.get('cpu_count')} cores; "
              f"loadavg {m.get('loadavg')}; {m.get('versions')}.", ""]
    return "\n".join(lines)


def _validation(row: dict) -> str:
    val = row.get("validation")
    return f"{val['hr@10']:.4f} / {val['ndcg@10']:.4f}" if val else "-"


def _ours_params(params: dict) -> str:
    if "embedding_dim" not in params:  # a seed mean's row
        return ", ".join(f"{k}={v}" for k, v in params.items())
    if params["objective"] == "low_rank_ridge":
        return f"defaults: low_rank_ridge, shrinkage {params['ridge_shrinkage']:g}"
    return f"defaults: {params['objective']}, {params['epochs']} epochs chosen"


if __name__ == "__main__":
    raise SystemExit(main())
