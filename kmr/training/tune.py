"""A small, time-bounded search over the settings that matter, on a validation split.

Each user's latest positive is held out of the data (by timestamp when there is one);
every candidate setting is fit on the rest with per-epoch validation, so the number of
epochs is chosen by early stopping on the validation HR@10 and NDCG@10 (the best epoch of
each run's smoothed scores), not fixed. Candidates run in a fixed order (the defaults
first, then one change at a time along each axis) until the time budget is spent; the
best one wins, with ties going to the earlier (closer to the defaults) candidate. No test
data is touched: tune on a training file, then `train` with the chosen settings, which
holds out its own test split.

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> data = make_synthetic(num_users=60, num_items=40, interactions_per_user=6)
    >>> base = TrainSettings(epochs=2, embedding_dim=4)
    >>> result = tune(data, base, grid={"temperature": (0.1, 0.2)}, budget_seconds=60)
    >>> [row.changes for row in result.rows]
    [{}, {'temperature': 0.2}]
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kmr.data.interactions import Interactions
from kmr.training.early_stopping import best_epoch
from kmr.training.evaluation import holdout_split
from kmr.training.settings import TrainSettings, with_overrides

# One axis at a time around the defaults (bounded: 1 + sum of the alternatives runs).
GRADIENT_GRID: Mapping[str, Sequence[object]] = {
    "embedding_dim": (64, 256),
    "learning_rate": (0.001, 0.005),
    "temperature": (0.05, 0.2),
    "l2_reg": (1e-4, 1e-2),
    "batch_size": (64, 256),
}
# The closed-form objective has two settings (about a second per candidate on
# MovieLens); the gradient family's default is one more candidate.
CLOSED_FORM_GRID: Mapping[str, Sequence[object]] = {
    "embedding_dim": (64, 256),
    "ridge_shrinkage": (3.0, 30.0),
    "objective": ("sampled_softmax",),
}


def default_grid(settings: TrainSettings, num_items: int) -> Mapping[str, Sequence[object]]:
    """The axes that matter for ``settings``' objective.

    Example:
        >>> sorted(default_grid(TrainSettings(objective="low_rank_ridge"), 100))
        ['embedding_dim', 'objective', 'ridge_shrinkage']
    """
    return GRADIENT_GRID if settings.has_epochs(num_items) else CLOSED_FORM_GRID


@dataclass(frozen=True)
class TuneRow:
    """One candidate: what it changed, its best validation epoch and metrics, its time."""

    changes: dict[str, object]
    best_epoch: int
    hit_rate: float
    ndcg: float
    seconds: float


@dataclass
class TuneResult:
    """The candidates that ran (in order) and the chosen settings."""

    rows: list[TuneRow] = field(default_factory=list)
    best: TrainSettings | None = None
    skipped: list[dict[str, object]] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table, best first."""
        lines = ["changes                          best epoch  HR@10   NDCG@10  seconds"]
        for row in sorted(self.rows, key=lambda r: (-r.hit_rate, -r.ndcg)):
            change = ", ".join(f"{k}={v}" for k, v in row.changes.items()) or "(defaults)"
            lines.append(f"{change:<32} {row.best_epoch:>10}  {row.hit_rate:.4f}  "
                         f"{row.ndcg:.4f}   {row.seconds:7.1f}")
        return "\n".join(lines)


def candidates(grid: Mapping[str, Sequence[object]]) -> list[dict[str, object]]:
    """The defaults, then each alternative value of each axis on its own."""
    return [{}] + [{name: value} for name, values in grid.items() for value in values]


def tune(data: Interactions, base: TrainSettings | None = None, *,
         grid: Mapping[str, Sequence[object]] | None = None,
         budget_seconds: float = 600.0) -> TuneResult:
    """Runs `candidates` of ``grid`` around ``base`` until ``budget_seconds`` are spent.

    ``grid`` defaults to `default_grid` of ``base``'s objective.
    ``base.epochs`` is the most epochs a candidate may run (each stops early after
    ``base.patience`` epochs without a better smoothed validation score); the best epoch
    of its smoothed scores (`kmr.training.early_stopping.best_epoch`) becomes the chosen
    ``epochs``, with ``patience=0``. The first candidate always runs.
    """
    from kmr.training.fit import fit_recommender

    base = base or TrainSettings()
    split = holdout_split(data, 1, seed=base.seed)
    grid = default_grid(base, data.num_items) if grid is None else grid
    result = TuneResult()
    started = time.monotonic()
    for changes in candidates(grid):
        if changes and all(getattr(base, k) == v for k, v in changes.items()):
            continue  # the same as the defaults, which run first
        if result.rows and time.monotonic() - started > budget_seconds:
            result.skipped.append(changes)
            continue
        settings = with_overrides(base, **changes)
        fit = fit_recommender(split.train, settings, validation=split, verbose=0)
        epoch = best_epoch([(m.hit_rate + m.ndcg) / 2 for m in fit.validation])
        chosen = fit.validation[epoch - 1]
        result.rows.append(TuneRow(changes, epoch, chosen.hit_rate, chosen.ndcg,
                                   round(fit.seconds, 1)))
    winner = max(result.rows, key=lambda r: (r.hit_rate, r.ndcg))  # first wins ties
    # The epoch count is chosen here: `train --settings` then trains exactly that many.
    result.best = with_overrides(base, **winner.changes, epochs=winner.best_epoch,
                                 patience=0)
    return result
