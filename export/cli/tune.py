"""``kmr-export tune``: a bounded search for training settings on a validation split.

A thin wrapper over `kmr.training.tune.tune`: prints a table (best first) and writes the
chosen settings as JSON for ``kmr-export train --settings FILE``.

Example:
    $ kmr-export tune --data ratings.csv --out tuned.json --budget-s 600
    $ kmr-export train --data ratings.csv --settings tuned.json --out artifacts
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from export.cli.train import add_data_arguments, load_data
from export.errors import UserError
from kmr.training.settings import TrainSettings, settings_to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``tune`` flags to ``parser``."""
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="settings JSON to write")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="stop starting new candidates after this many seconds "
                        "(default 600; the first candidate always runs)")
    parser.add_argument("--max-epochs", type=int, default=TrainSettings().epochs + 5,
                        help="most epochs per candidate; the best validation epoch is kept")


def run(args: argparse.Namespace) -> int:
    """Tunes, prints the table and writes ``--out``; returns the exit code."""
    if args.budget_s <= 0 or args.max_epochs < 1:
        raise UserError("--budget-s must be > 0 and --max-epochs >= 1.")
    if args.out.exists() and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; expected a file path.")
    from kmr.training.tune import tune

    base = TrainSettings(epochs=args.max_epochs)
    result = tune(load_data(args, base.seed), base, budget_seconds=args.budget_s)
    print(result.table())
    if result.skipped:
        print(f"{len(result.skipped)} candidates skipped: the {args.budget_s:g} s budget ran out")
    record = {"format": "kmr-tuned-settings/1", "settings": settings_to_dict(result.best),
              "candidates": [vars(row) for row in result.rows],
              "skipped": result.skipped}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0
