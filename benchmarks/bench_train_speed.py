"""Training throughput of the two fit loops on MovieLens, side by side in one run.

- ``Keras fit``: `ObjectiveModel` + `LazyAdam` through Keras' ``fit`` (XLA, 64 steps
  per compiled call), the loop `fit_recommender` used before `SampledSoftmaxLoop`;
- ``compiled loop``: `SampledSoftmaxLoop`, today's default for sampled softmax.

Both at today's `TrainSettings()` defaults for sampled softmax. Each variant fits the
MovieLens training part (each user's latest positive held out) ``--repeats`` times,
interleaved; reported: median interactions/s of the whole fit (rows x epochs / wall
seconds, XLA compilation included), of the epochs after the first (steady), and the test
HR@10 / NDCG@10 of each fit (the loops compute the same updates; only the shuffling RNG
differs).
Writes benchmarks/results/train_speed.json and .md.

Run: .venv/bin/python benchmarks/bench_train_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import loadavg, machine_info  # noqa: E402

from kmr.data.files import load_interactions  # noqa: E402
from kmr.training.evaluation import evaluate_ranking, holdout_split  # noqa: E402
from kmr.training.fit import TrainSettings, embedding_scorer, fit_recommender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/movielens-latest-small/ratings.csv"
RESULTS = ROOT / "benchmarks/results"
VARIANTS = {"Keras fit (previous loop)": False, "compiled loop (SampledSoftmaxLoop)": True}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_interactions(DATA)
    split = holdout_split(data)
    start_info = machine_info()
    settings = TrainSettings(objective="sampled_softmax")
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, compiled in VARIANTS.items():
            fit = fit_recommender(split.train, settings, verbose=0, compiled_loop=compiled)
            metrics = evaluate_ranking(embedding_scorer(fit.model), split)
            steady = np.median([len(split.train) / s for s in fit.epoch_seconds[1:]])
            runs[name].append({"seconds": round(fit.seconds, 2),
                               "ips": round(fit.interactions_per_second),
                               "steady_ips": round(float(steady)),
                               "hr@10": round(metrics.hit_rate, 4),
                               "ndcg@10": round(metrics.ndcg, 4)})
            print(name, runs[name][-1], flush=True)
    report = {"rows": len(split.train), "runs": runs, "machine": start_info,
              "loadavg_end": loadavg(),
              "settings": settings.__dict__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "train_speed.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict) -> str:
    lines = [
        "# Training throughput on MovieLens latest-small (training part, "
        f"{report['rows']} rows)",
        "",
        "Interactions/s = rows x epochs / wall seconds of the whole fit (XLA compilation "
        "included); steady = the epochs after the first; medians over interleaved "
        "repeats; test HR@10 / NDCG@10 of each fit (leave-last-out). Shared machine: see "
        "the load averages below.",
        "",
        "| variant | epochs, batch, dim | median interactions/s | all runs | "
        "median steady interactions/s | median HR@10 | median NDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    s = report["settings"]
    for name, runs in report["runs"].items():
        lines.append(
            f"| {name} | {s['epochs']}, {s['batch_size']}, {s['embedding_dim']} "
            f"| {np.median([r['ips'] for r in runs]):,.0f} "
            f"| {', '.join(format(r['ips'], ',') for r in runs)} "
            f"| {np.median([r['steady_ips'] for r in runs]):,.0f} "
            f"| {np.median([r['hr@10'] for r in runs]):.4f} "
            f"| {np.median([r['ndcg@10'] for r in runs]):.4f} |"
        )
    m = report["machine"]
    lines += ["", f"Machine: {m.get('Model name', '?')}, {m.get('cpu_count')} cores; "
              f"loadavg at start {m['loadavg']}, at end {report['loadavg_end']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
