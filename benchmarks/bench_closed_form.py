"""How the closed-form objective (``low_rank_ridge``) scales: seconds and memory vs rows.

Each case builds its data, then times `kmr.training.low_rank_ridge.low_rank_ridge_tables`
at the defaults (D 128, shrinkage 10), in a fresh subprocess so its peak resident
memory is its own. Two kinds of data, because ARPACK's cost depends on the spectrum:

- ``synthetic``: `make_synthetic` (a planted low-rank taste: an easy spectrum);
- ``movielens xN``: MovieLens latest-small, every rating a positive, with each user
  copied N times (the real, flatter spectrum at N times the rows; the item side stays
  9.7k, the svds path is forced even where the exact Gram path would apply).

Reported: interactions/s (rows / wall seconds of the solve; data building excluded),
peak RSS. Writes benchmarks/results/closed_form.json and .md.

Run: .venv/bin/python benchmarks/bench_closed_form.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine_info, machine_line, markdown_table, write_results  # noqa: E402, I001

CASES = {
    "synthetic 1M (20k users x 10k items)": ("synthetic", 20_000, 10_000, 50),
    "synthetic 5M (50k users x 20k items)": ("synthetic", 50_000, 20_000, 100),
    "synthetic 20M (140k users x 27k items)": ("synthetic", 140_000, 27_000, 143),
    "movielens x10 (1M rows)": ("movielens", 10, 0, 0),
    "movielens x50 (5M rows)": ("movielens", 50, 0, 0),
    "movielens x200 (20M rows)": ("movielens", 200, 0, 0),
}


def _data(kind: str, a: int, b: int, c: int):
    import numpy as np

    from kmr.data.interactions import Interactions
    from kmr.data.synthetic import make_synthetic
    from kmr.vocabulary import Vocabulary

    if kind == "synthetic":
        return make_synthetic(num_users=a, num_items=b, interactions_per_user=c, seed=0)
    from bench_baselines import DATA

    from kmr.data.files import load_interactions

    base = load_interactions(DATA, rating_threshold=0.0)
    copies = np.arange(a)
    users = (base.users[None, :] + base.num_users * copies[:, None]).ravel()
    return Interactions(users, np.tile(base.items, a), None,
                        Vocabulary(list(range(base.num_users * a))), base.item_vocab)


def run_case(name: str) -> dict:
    """One case, in this process: build the data, time the solve."""
    from kmr.training import low_rank_ridge

    kind, *sizes = CASES[name]
    data = _data(kind, *sizes)
    if kind == "movielens":
        low_rank_ridge._EXACT_SIDE_MAX = 0  # the scalable path, as on large data
    start = time.perf_counter()
    tables = low_rank_ridge.low_rank_ridge_tables(data, dim=128, shrinkage=10.0)
    seconds = time.perf_counter() - start
    return {"case": name, "rows": len(data), "users": data.num_users,
            "items": data.num_items, "seconds": round(seconds, 2),
            "interactions_per_second": round(len(data) / seconds),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "loss": round(tables.loss, 5)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", help="run one case in this process (internal)")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    start = machine_info()
    rows = []
    for name in args.cases:
        out = subprocess.run([sys.executable, __file__, "--case", name], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    report = {"rows": rows, "machine": start, "loadavg_end": loadavg()}
    table = markdown_table(
        ["case", "rows", "users", "items", "solve s", "interactions/s", "peak RSS GB"],
        [[r["case"], f"{r['rows']:,}", f"{r['users']:,}", f"{r['items']:,}", r["seconds"],
          f"{r['interactions_per_second']:,}", r["peak_rss_gb"]] for r in rows])
    md = "\n".join([
        "# Closed-form objective (low_rank_ridge): solve time and memory vs rows", "",
        "D 128, shrinkage 10; each case in its own process (peak RSS includes the data). "
        "`movielens xN`: every rating of MovieLens latest-small a positive, each user "
        "copied N times (a real spectrum), svds path forced.", "", table, "",
        machine_line(start, report["loadavg_end"]), ""])
    write_results("closed_form", report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
