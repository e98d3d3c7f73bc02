"""Steady-state training throughput on a larger synthetic data set (compilation excluded).

`bench_train_speed.py` times whole fits on MovieLens (48k rows: XLA compilation and the
first epoch weigh a lot). Here `fit_recommender` trains ``--epochs`` epochs on synthetic
data of ``--users`` x ``--per-user`` rows (`FitResult.epoch_seconds`); the steady rate
is the median of the epochs after the first. Variants (interleaved over ``--repeats``):
Keras' fit of the objective (the previous loop) and `SampledSoftmaxLoop` at the
defaults, then the compiled loop at batch 256 (the previous default), 512 and at D 64
(what the per-step overhead, the in-batch softmax's B^2 and the width cost). Writes
benchmarks/results/train_steady.json/.md (``--out NAME`` for another file name).

Run: .venv/bin/python benchmarks/bench_train_steady.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import loadavg, machine_info, markdown_table  # noqa: E402

from kmr.data.synthetic import make_synthetic  # noqa: E402
from kmr.training.fit import TrainSettings, fit_recommender  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (settings change, compiled_loop) per variant.
VARIANTS: dict[str, tuple[dict, bool]] = {
    "Keras fit (ObjectiveModel + LazyAdam, XLA, 64 steps/call)": ({}, False),
    "compiled loop (SampledSoftmaxLoop), defaults": ({}, True),
    "compiled loop, batch 256 (the previous default)": ({"batch_size": 256}, True),
    "compiled loop, batch 512": ({"batch_size": 512}, True),
    "compiled loop, D 64": ({"embedding_dim": 64}, True),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="train_steady")
    args = parser.parse_args()
    data = make_synthetic(num_users=args.users, num_items=args.items,
                          interactions_per_user=args.per_user, seed=0)
    start_info = machine_info()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (change, compiled) in VARIANTS.items():
            settings = replace(TrainSettings(objective="sampled_softmax"),
                               epochs=args.epochs, **change)
            seconds = fit_recommender(data, settings, verbose=0,
                                      compiled_loop=compiled).epoch_seconds
            steady = [len(data) / s for s in seconds[1:]]
            runs[name].append({"epoch_seconds": [round(s, 2) for s in seconds],
                               "first_epoch_ips": round(len(data) / seconds[0]),
                               "steady_ips": round(float(np.median(steady)))})
            print(name, runs[name][-1], flush=True)
    report = {"rows": len(data), "users": data.num_users, "items": data.num_items,
              "runs": runs, "machine": start_info, "loadavg_end": loadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict) -> str:
    rows = []
    for name, runs in report["runs"].items():
        steady = float(np.median([r["steady_ips"] for r in runs]))
        rows.append([name, f"{steady:,.0f}",
                     ", ".join(format(r["steady_ips"], ",") for r in runs),
                     f"{np.median([r['first_epoch_ips'] for r in runs]):,.0f}",
                     f"{20e6 * 15 / steady / 60:.0f}"])
    m = report["machine"]
    return "\n".join([
        f"# Steady-state training throughput ({report['rows']:,} synthetic rows, "
        f"{report['users']:,} users, {report['items']:,} items)", "",
        "Interactions/s of each epoch after the first (median; XLA compilation is in the "
        "first epoch), variants interleaved over repeats. Last column: minutes for 15 "
        "epochs over 20M interactions at the steady rate.", "",
        markdown_table(["variant", "steady interactions/s", "all runs",
                        "first epoch interactions/s", "min for 20M x 15 epochs"], rows), "",
        f"Machine: {m.get('Model name', '?')}, {m.get('cpu_count')} cores; loadavg at "
        f"start {m['loadavg']}, at end {report['loadavg_end']}.", "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
