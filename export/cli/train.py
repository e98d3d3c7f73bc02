"""``kmr-export train``: interactions file (or synthetic data) -> trained, evaluated model.

A thin wrapper over `kmr.data.files.load_interactions` / `kmr.data.synthetic.make_synthetic`
and `kmr.training.fit.train_recommender`.

The epoch count is chosen first, by early stopping on a validation split carved from the
training part (each user's latest training positive; ``--patience 0`` trains exactly
``--epochs``). After the holdout evaluation the saved model is fit again on all rows
(the held-out latest positives included) with the same settings and epoch count;
``--no-refit`` saves the evaluated holdout model instead. ``metrics.json`` says which
numbers come from which fit, and what the epoch choice saw (``epoch_choice``).

Example:
    $ kmr-export train --out artifacts --epochs 5
    $ kmr-export train --data ratings.csv --out artifacts --epochs 20 --dim 64
    $ kmr-export train --data ratings.csv --out artifacts --no-refit
"""

from __future__ import annotations

import argparse
import math

from export.errors import UserError
from kmr.training.settings import OBJECTIVES, TrainSettings, with_overrides

_DEFAULTS = TrainSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` flags to ``parser``."""
    add_data_arguments(parser)
    _add_model_arguments(parser)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags (shared with ``tune``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="interactions CSV/TSV (default: built-in synthetic data)")
    data.add_argument("--sep", help="field separator (default: detected; use '\\t' for tab)")
    header = data.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_true", default=None,
                        help="line 1 names the columns")
    header.add_argument("--no-header", dest="header", action="store_false",
                        help="line 1 is data")
    data.add_argument("--user-col", help="user column name or 0-based position")
    data.add_argument("--item-col", help="item column name or 0-based position")
    data.add_argument("--rating-col", help="rating column name or 0-based position")
    data.add_argument("--timestamp-col", help="timestamp column name or 0-based position")
    data.add_argument("--rating-threshold", type=float, default=4.0,
                      help="ratings >= this are positives (default: 4)")
    synth = parser.add_argument_group("synthetic data (when --data is not given)")
    synth.add_argument("--synthetic-users", type=int, default=2000)
    synth.add_argument("--synthetic-items", type=int, default=1000)
    synth.add_argument("--synthetic-rank", type=int, default=8)
    synth.add_argument("--synthetic-interactions", type=int, default=20,
                       help="positives per synthetic user")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    model = parser.add_argument_group("model and training")
    model.add_argument("--out", required=True, help="artifacts folder to write")
    model.add_argument("--settings", default=None, metavar="JSON",
                       help="start from the settings `kmr-export tune` wrote (flags given "
                       "here still override them)")
    model.add_argument("--epochs", type=int, help=f"most epochs (default {d.epochs}); the "
                       "count is chosen on a validation split unless --patience 0")
    model.add_argument("--patience", type=int, help="early stopping: epochs without a "
                       "better validation score before the epoch-count search stops; 0 "
                       f"trains exactly --epochs (default {d.patience})")
    model.add_argument("--dim", type=int, dest="embedding_dim",
                       help=f"embedding width D (default {d.embedding_dim})")
    model.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    model.add_argument("--lr", type=float, dest="learning_rate",
                       help=f"Adam learning rate (default {d.learning_rate})")
    model.add_argument("--l2", type=float, dest="l2_reg",
                       help=f"L2 on looked-up embedding rows (default {d.l2_reg})")
    model.add_argument("--temperature", type=float,
                       help=f"logits = similarity / temperature (default {d.temperature})")
    model.add_argument("--objective", choices=("auto", *OBJECTIVES),
                       help=f"default {d.objective}; auto = full softmax up to "
                       f"{d.full_softmax_max_items} items, sampled softmax above")
    model.add_argument("--ridge-shrinkage", type=float, dest="ridge_shrinkage",
                       help="low_rank_ridge's ridge strength in units of the mean item "
                       f"popularity (default {d.ridge_shrinkage})")
    model.add_argument("--k", type=int,
                       help=f"top-k of the saved model and the metrics (default {d.k})")
    model.add_argument("--seed", type=int, help=f"default {d.seed}")
    model.add_argument("--no-refit", dest="refit", action="store_false",
                       help="save the model fit without each user's held-out latest "
                       "positive (the one the metrics describe) instead of refitting "
                       "on all rows")
    model.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    """Loads the data, trains, evaluates and writes ``--out``; returns the exit code."""
    from kmr.training.artifacts import check_output_dir

    settings = settings_from_args(args)
    check_output_dir(args.out)  # before reading gigabytes or training
    data = _load(args, settings.seed)

    from kmr.training.fit import train_recommender

    result = train_recommender(
        data, settings, args.out, refit=args.refit, verbose=0 if args.quiet else 1
    )
    if not args.quiet:
        print(f"wrote {result.output_dir}")
    return 0


# Settings a command line may override -> the flag that sets it (absent attributes of
# ``args`` are left at their defaults, so `demo`, which has only some flags, shares this).
_FLAGS = {
    "epochs": "--epochs",
    "patience": "--patience",
    "embedding_dim": "--dim",
    "batch_size": "--batch-size",
    "learning_rate": "--lr",
    "l2_reg": "--l2",
    "temperature": "--temperature",
    "objective": "--objective",
    "ridge_shrinkage": "--ridge-shrinkage",
    "k": "--k",
    "seed": "--seed",
}


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """`TrainSettings` with the flags given in ``args``; UserError naming a bad flag."""

    given = {name: getattr(args, name, None) for name in _FLAGS}
    for name, value in given.items():
        if value is not None:
            _check_value(name, value, _FLAGS[name])
    return with_overrides(_base_settings(args), **given)


def _check_value(name: str, value: object, label: str) -> None:
    """UserError naming ``label`` unless ``value`` is in range for setting ``name``."""
    if name in ("epochs", "embedding_dim", "batch_size", "k"):
        ok, expected = value >= 1, ">= 1"
    elif name in ("l2_reg", "patience", "ridge_shrinkage"):
        ok, expected = value >= 0, ">= 0"
    elif name in ("learning_rate", "temperature"):
        ok, expected = value > 0, "> 0"
    else:
        return
    if not ok or not math.isfinite(value):  # comparisons alone refuse NaN, not inf
        raise UserError(f"{label} must be a finite number {expected}, got {value}.")


def _base_settings(args: argparse.Namespace) -> TrainSettings:
    """``--settings FILE`` (tune's output), else the defaults."""
    path = getattr(args, "settings", None)
    if path is None:
        return TrainSettings()
    import json

    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)["settings"]
        settings = TrainSettings(**values)
        for name in _FLAGS:
            _check_value(name, getattr(settings, name), f"--settings {path}: {name}")
        return settings
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"--settings {path}: not a settings file written by tune ({error})"
                        ) from error


def load_data(args: argparse.Namespace, seed: int):
    """The interactions the data flags name (synthetic when ``--data`` is absent)."""
    return _load(args, seed)


def _load(args: argparse.Namespace, seed: int):
    if args.data is None:
        from kmr.data.synthetic import make_synthetic

        try:
            return make_synthetic(
                args.synthetic_users,
                args.synthetic_items,
                args.synthetic_rank,
                args.synthetic_interactions,
                seed=seed,
            )
        except ValueError as error:
            raise UserError(f"synthetic data: {error}") from error
    from kmr.data.files import load_interactions

    sep = args.sep.replace("\\t", "\t") if args.sep else None  # typed backslash-t: tab
    return load_interactions(
        args.data,
        sep=sep,
        header=args.header,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
        rating_threshold=args.rating_threshold,
    )
