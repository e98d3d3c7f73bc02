"""Training throughput before vs after the fit-loop changes, side by side in one run.

- ``before``: the previous loop (dense `keras.optimizers.Adam`, no XLA, one step per
  compiled call) with the previous defaults (``OLD_DEFAULTS``);
- ``after, old defaults``: today's `fit_recommender` (LazyAdam, XLA, 64 steps per call)
  with the previous defaults: the loop's own gain;
- ``after``: today's `fit_recommender` with today's `TrainSettings()` defaults.

Each variant fits the MovieLens training part (each user's latest positive held out)
``--repeats`` times, interleaved; reported: median interactions/s (rows x epochs /
wall seconds, graph compilation included) and the test HR@10 / NDCG@10 of each fit.
Writes benchmarks/results/train_speed.json and .md.

Run: .venv/bin/python benchmarks/bench_train_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _common import loadavg, machine_info  # noqa: E402

from kmr.data.files import load_interactions  # noqa: E402
from kmr.data.interactions import Interactions  # noqa: E402
from kmr.models import build_recommender, recommender_parts  # noqa: E402
from kmr.training.evaluation import evaluate_ranking, holdout_split  # noqa: E402
from kmr.training.fit import TrainSettings, embedding_scorer, fit_recommender  # noqa: E402
from kmr.training.objectives import ObjectiveModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/movielens-latest-small/ratings.csv"
RESULTS = ROOT / "benchmarks/results"
OLD_DEFAULTS = TrainSettings(
    embedding_dim=128, epochs=12, batch_size=256, learning_rate=0.002, l2_reg=1e-3,
    temperature=0.1, objective="sampled_softmax",
)


def fit_before(train: Interactions, settings: TrainSettings) -> tuple[keras.Model, float]:
    """The previous fit loop: dense Adam, ``jit_compile=False``, one step per call."""
    keras.utils.set_random_seed(settings.seed)
    model = build_recommender(train.num_users, train.num_items, settings.embedding_dim,
                              settings.l2_reg, k=settings.k)
    parts = recommender_parts(model)
    trainer = ObjectiveModel(parts.embedding, parts.similarity, settings.objective,
                             item_counts=train.item_counts(),
                             temperature=settings.temperature, seed=settings.seed)
    trainer.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                    jit_compile=False)
    start = time.perf_counter()
    trainer.fit({"user": train.users, "item": train.items}, batch_size=settings.batch_size,
                epochs=settings.epochs, shuffle=True, verbose=0)
    return model, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_interactions(DATA)
    split = holdout_split(data)
    start_info = machine_info()
    variants = {
        "before (old loop, old defaults)": lambda: fit_before(split.train, OLD_DEFAULTS),
        "after (new loop, old defaults)": lambda: _fit_now(split.train, OLD_DEFAULTS),
        "after (new loop, new defaults)": lambda: _fit_now(split.train, TrainSettings()),
    }
    settings = {name: OLD_DEFAULTS for name in list(variants)[:2]}
    settings["after (new loop, new defaults)"] = TrainSettings()
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            model, seconds = run()
            metrics = evaluate_ranking(embedding_scorer(model), split)
            rate = len(split.train) * settings[name].epochs / seconds
            runs[name].append({"seconds": round(seconds, 2), "ips": round(rate),
                               "hr@10": round(metrics.hit_rate, 4),
                               "ndcg@10": round(metrics.ndcg, 4)})
            print(name, runs[name][-1], flush=True)
    report = {"rows": len(split.train), "runs": runs, "machine": start_info,
              "loadavg_end": loadavg(),
              "settings": {k: v.__dict__ for k, v in settings.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "train_speed.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _fit_now(train: Interactions, settings: TrainSettings) -> tuple[keras.Model, float]:
    fit = fit_recommender(train, replace(settings), verbose=0)
    return fit.model, fit.seconds


def _markdown(report: dict) -> str:
    lines = [
        "# Training throughput on MovieLens latest-small (training part, "
        f"{report['rows']} rows)",
        "",
        "Interactions/s = rows x epochs / wall seconds of the fit (XLA compilation "
        "included); median over interleaved repeats; test HR@10 / NDCG@10 of each fit "
        "(leave-last-out). Shared machine: see the load averages below.",
        "",
        "| variant | epochs, batch, dim | median interactions/s | all runs | "
        "median HR@10 | median NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in report["runs"].items():
        s = report["settings"][name]
        lines.append(
            f"| {name} | {s['epochs']}, {s['batch_size']}, {s['embedding_dim']} "
            f"| {np.median([r['ips'] for r in runs]):,.0f} "
            f"| {', '.join(format(r['ips'], ',') for r in runs)} "
            f"| {np.median([r['hr@10'] for r in runs]):.4f} "
            f"| {np.median([r['ndcg@10'] for r in runs]):.4f} |"
        )
    m = report["machine"]
    lines += ["", f"Machine: {m.get('Model name', '?')}, {m.get('cpu_count')} cores; "
              f"loadavg at start {m['loadavg']}, at end {report['loadavg_end']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
