"""``kmr-export train``: interactions file (or synthetic data) -> trained, evaluated model.

A thin wrapper over `export.data.load_interactions` / `export.synthetic.make_synthetic`
and `export.training.train_recommender`.

Example:
    $ kmr-export train --out artifacts --epochs 5
    $ kmr-export train --data ratings.csv --out artifacts --epochs 20 --dim 64
"""

from __future__ import annotations

import argparse

from export.errors import UserError
from export.train_settings import OBJECTIVES, TrainSettings

_DEFAULTS = TrainSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` flags to ``parser``."""
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
    model = parser.add_argument_group("model and training")
    model.add_argument("--out", required=True, help="artifacts folder to write")
    d = _DEFAULTS
    model.add_argument("--epochs", type=int, help=f"default {d.epochs}")
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
    model.add_argument("--k", type=int,
                       help=f"top-k of the saved model and the metrics (default {d.k})")
    model.add_argument("--seed", type=int, help=f"default {d.seed}")
    model.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    """Loads the data, trains, evaluates and writes ``--out``; returns the exit code."""
    from export.train_artifacts import check_output_dir

    settings = _settings(args)
    check_output_dir(args.out)  # before reading gigabytes or training
    data = _load(args, settings.seed)

    from export.training import train_recommender

    result = train_recommender(data, settings, args.out, verbose=0 if args.quiet else 1)
    if not args.quiet:
        print(f"wrote {result.output_dir}")
    return 0


def _settings(args: argparse.Namespace) -> TrainSettings:
    from export.training import with_overrides

    for name in ("epochs", "embedding_dim", "batch_size", "k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    for name in ("learning_rate", "temperature"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UserError(f"--{name} must be > 0, got {value}.")
    if args.l2_reg is not None and not args.l2_reg >= 0:
        raise UserError(f"--l2 must be >= 0, got {args.l2_reg}.")
    return with_overrides(
        TrainSettings(),
        epochs=args.epochs,
        embedding_dim=args.embedding_dim,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        l2_reg=args.l2_reg,
        temperature=args.temperature,
        objective=args.objective,
        k=args.k,
        seed=args.seed,
    )


def _load(args: argparse.Namespace, seed: int):
    if args.data is None:
        from export.synthetic import make_synthetic

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
    from export.data import load_interactions

    sep = args.sep.encode().decode("unicode_escape") if args.sep else None  # "\t" -> tab
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
