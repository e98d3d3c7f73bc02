"""Candidate defaults side by side on several variants of MovieLens, the way `train` fits.

For each data variant (positives = ratings >= each ``--min-ratings`` value) and each
candidate (`TrainSettings` overrides), every seed chooses its epoch count on a
validation split and fits, as `train` does, twice:

- on the validation split's training part, scored on the validation positives (each
  user's latest positive of the training part): what a default is chosen on;
- on the test split's training part, scored on the test positives (each user's latest):
  reported, not chosen on.

Scores are the per-user seed mean (one seed's HR@10 moves by about 0.01 on 610 users);
the paired column compares each candidate with the first on the same users.
Results: benchmarks/results/<out>.json and .md.

Run: .venv/bin/python benchmarks/bench_default_variants.py \
    --candidates '{"batch 256": {"batch_size": 256}, "batch 128": {"batch_size": 128}}'
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
from _common import (  # noqa: E402
    loadavg,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)
from bench_baselines import DATA, _summary, fit_as_train, paired, seed_mean  # noqa: E402

from kmr.data.files import load_interactions  # noqa: E402
from kmr.training.evaluation import HoldoutSplit, holdout_split  # noqa: E402


def seeds_fit(split: HoldoutSplit, overrides: dict, seeds: list[int]) -> dict:
    """Per-seed `train`-style fits on ``split.train``, scored on ``split``'s positives."""
    runs, epochs, speeds = [], [], []
    for seed in seeds:
        ours = fit_as_train(split, overrides, seed)
        runs.append(ours.ranking)
        epochs.append(ours.fit.epochs)
        speeds.append(ours.fit.interactions_per_second)
    return {"ranking": seed_mean(runs), "epochs": epochs,
            "interactions_per_second": round(float(np.median(speeds)))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", required=True,
                        help='JSON {"name": {TrainSettings overrides}}; the first is the base')
    parser.add_argument("--min-ratings", default="4,3,0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="default_variants")
    args = parser.parse_args()
    candidates: dict[str, dict] = json.loads(args.candidates)
    start = machine_info()
    rows = []
    for min_rating in (float(v) for v in args.min_ratings.split(",")):
        split = holdout_split(load_interactions(DATA, rating_threshold=min_rating))
        splits = {"validation": holdout_split(split.train), "test": split}
        base: dict[str, object] = {}
        for name, overrides in candidates.items():
            row: dict[str, object] = {"min_rating": min_rating, "candidate": name,
                                      "overrides": overrides}
            for where, part in splits.items():
                result = seeds_fit(part, overrides, args.seeds)
                ranking = result.pop("ranking")
                base.setdefault(where, ranking)
                row[where] = {**_summary(ranking), **result,
                              "paired_vs_first": paired(ranking, base[where])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"data": DATA.name, "seeds": args.seeds, "rows": rows, "machine": start,
              "loadavg_end": loadavg()}
    write_results(args.out, report, _markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict) -> str:
    first = report["rows"][0]["candidate"]
    lines = [
        "# Candidate defaults on variants of MovieLens latest-small",
        "",
        f"Each candidate fits as `train` does (epoch count chosen on a validation split) "
        f"with seeds {report['seeds']}; scores are per-user seed means, ± one standard "
        "error over users. Validation: fit on the validation split's training part, scored "
        "on each user's latest training positive (what a default is chosen on). Test: fit "
        "on the test split's training part, scored on each user's latest positive "
        f"(reported only). Paired: candidate minus {first!r} on the same users (mean, "
        "paired t-test p). Interactions/s: median over the test fits, XLA compilation "
        "included where a fit is the first of its table shapes.",
        "",
    ]
    table = []
    for row in report["rows"]:
        cells = [f">= {row['min_rating']:g}", row["candidate"]]
        for where in ("validation", "test"):
            r = row[where]
            p = r["paired_vs_first"]
            cells += [f"{r['hr@10']:.4f} ± {r['hr@10_se']:.4f}",
                      f"{r['ndcg@10']:.4f} ± {r['ndcg@10_se']:.4f}",
                      f"{p['hr@10_diff']:+.4f} ({p['hr@10_p']:.2f}) / "
                      f"{p['ndcg@10_diff']:+.4f} ({p['ndcg@10_p']:.2f})"]
        cells += [", ".join(map(str, row["test"]["epochs"])),
                  f"{row['test']['interactions_per_second']:,}"]
        table.append(cells)
    lines.append(markdown_table(
        ["positives", "candidate", "val HR@10", "val NDCG@10", "val paired HR / NDCG (p)",
         "test HR@10", "test NDCG@10", "test paired HR / NDCG (p)", "test epochs chosen",
         "interactions/s"], table))
    lines += ["", machine_line(report["machine"], report["loadavg_end"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
