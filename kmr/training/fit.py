"""Trains the kmr recommender on positives and evaluates it against popularity.

`fit_recommender` trains one model; `train_recommender` is the whole job the CLI
wraps: hold out each user's latest positive, fit on the rest (the *holdout fit*), rank
the full catalogue for the held-out users (model and popularity baseline), then by
default fit again with the same settings and epoch count on all rows (the *final
fit*, which is the model saved and served: it has seen each user's latest positive)
and optionally write the artifacts folder (see `kmr.training.artifacts`).

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> data = make_synthetic(num_users=200, num_items=100, interactions_per_user=10)
    >>> result = train_recommender(data, TrainSettings(epochs=2, embedding_dim=8), verbose=0)
    >>> sorted(result.metrics), result.refit
    (['model', 'popularity'], True)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from kmr.data.interactions import Interactions
from kmr.models import build_recommender, recommender_parts
from kmr.training.artifacts import check_output_dir, write_artifacts
from kmr.training.early_stopping import best_epoch
from kmr.training.evaluation import (
    HoldoutSplit,
    RankingMetrics,
    Scorer,
    evaluate_ranking,
    format_metrics_table,
    holdout_split,
    popularity_scorer,
)
from kmr.training.loops import (
    EpochLog,
    fit_closed_form,
    fit_compiled,
    fit_keras,
    use_compiled_loop,
)
from kmr.training.objectives import pairwise_scores
from kmr.training.settings import TrainSettings


@dataclass
class FitResult:
    """A trained inference model and its per-epoch curves.

    Attributes:
        model: The saved-model graph (`kmr.models.build_recommender`), trained.
        objective: The objective used (``"auto"`` resolved).
        loss: Training loss per epoch.
        validation: Per-epoch validation metrics, when a validation split was given.
        seconds: Wall time of the fit (graph compilation included).
        epoch_seconds: Wall time of each epoch (the first includes the compilation;
            validation is not included).
        num_positives: Training rows the fit read per epoch.
        epochs: Passes over them (fewer than ``settings.epochs`` after an early stop).
    """

    model: keras.Model
    objective: str
    loss: list[float]
    validation: list[RankingMetrics] = field(default_factory=list)
    seconds: float = 0.0
    num_positives: int = 0
    epochs: int = 0
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def interactions_per_second(self) -> float:
        """Training rows processed per wall-clock second (``positives * epochs / s``)."""
        return self.num_positives * self.epochs / self.seconds if self.seconds > 0 else 0.0

    def record(self, trained_on: str) -> dict[str, object]:
        """JSON-ready facts of this fit (the ``metrics.json`` fit entries)."""
        return {
            "trained_on": trained_on,
            "num_positives": self.num_positives,
            "epochs": self.epochs,
            "objective": self.objective,
            "train_seconds": round(self.seconds, 3),
            "interactions_per_second": round(self.interactions_per_second),
            "final_loss": self.loss[-1] if self.loss else None,
        }


HOLDOUT_ROWS = "all rows but each user's latest positive (held out for the metrics)"
ALL_ROWS = "all rows"


@dataclass
class TrainResult:
    """What `train_recommender` produced.

    Attributes:
        fit: The fit whose model is saved: the final fit on all rows, or the holdout
            fit when refitting was turned off.
        metrics: ``{"model": ..., "popularity": ...}`` on the held-out positives; they
            describe the holdout fit (the final fit has seen those positives).
        settings: The settings used (by both fits).
        summary: Facts about the data, split and fits (JSON-ready).
        output_dir: The artifacts folder, if one was written.
        holdout_fit: The fit on the training part of the split, which the metrics
            describe (the same object as ``fit`` without a refit).
    """

    fit: FitResult
    metrics: dict[str, RankingMetrics]
    settings: TrainSettings
    summary: dict[str, object]
    output_dir: Path | None = None
    holdout_fit: FitResult | None = None

    @property
    def model(self) -> keras.Model:
        """The trained inference model (the one saved)."""
        return self.fit.model

    @property
    def refit(self) -> bool:
        """Whether the saved model is a final fit on all rows."""
        return self.holdout_fit is not None and self.holdout_fit is not self.fit

    def fit_records(self) -> dict[str, object]:
        """Which fit the metrics and the saved model come from (part of ``metrics.json``).

        Example:
            >>> from kmr.data.synthetic import make_synthetic
            >>> data = make_synthetic(num_users=40, num_items=30, interactions_per_user=4)
            >>> result = train_recommender(data, TrainSettings(epochs=1, embedding_dim=4),
            ...                            verbose=0)
            >>> records = result.fit_records()
            >>> records["saved_model"], records["final_fit"]["trained_on"]
            ('final_fit', 'all rows')
            >>> records["final_fit"]["num_positives"] == len(data)
            True
        """
        holdout = self.holdout_fit or self.fit
        return {
            "metrics_from": "holdout_fit",
            "saved_model": "final_fit" if self.refit else "holdout_fit",
            "holdout_fit": holdout.record(HOLDOUT_ROWS),
            "final_fit": self.fit.record(ALL_ROWS) if self.refit else None,
            "epoch_choice": self.summary.get("epoch_choice"),
        }


def embedding_scorer(model: keras.Model) -> Scorer:
    """Scores the whole catalogue with the model's current embeddings (numpy out).

    Calls the model's own similarity layer on the users' rows against the item table
    (one MatMul), skipping the top-k, so evaluation ranks with exactly the served scores.

    Example:
        >>> model = build_recommender(3, 5, embedding_dim=4)
        >>> embedding_scorer(model)(np.array([0, 2])).shape
        (2, 5)
    """
    parts = recommender_parts(model)
    emb = parts.embedding

    def score(users: np.ndarray) -> np.ndarray:
        user_rows = keras.ops.take(emb.user_embeddings, np.asarray(users), axis=0)
        scores = pairwise_scores(parts.similarity, user_rows, emb.item_embeddings)
        return keras.ops.convert_to_numpy(scores)

    return score


def fit_recommender(
    train: Interactions,
    settings: TrainSettings | None = None,
    *,
    validation: HoldoutSplit | None = None,
    verbose: int = 1,
    compiled_loop: bool | None = None,
) -> FitResult:
    """Builds the recommender and trains it on ``train``'s positives.

    Deterministic: `keras.utils.set_random_seed(settings.seed)` is called first, so
    two runs with equal settings and data give identical weights on CPU.

    Args:
        train: Training positives (their vocabularies size the tables).
        settings: Hyper-parameters (default: `TrainSettings()`).
        validation: If given, ranking metrics on it are recorded after every epoch, and
            the fit stops early once they stall for ``settings.patience`` epochs.
        verbose: 0 silent, 1 one line per epoch with the loss.
        compiled_loop: Train with `SampledSoftmaxLoop` (sampled softmax on TensorFlow
            only), or with Keras' ``fit`` of `ObjectiveModel` + `LazyAdam` (every
            gradient objective, every backend). ``None`` (default): the compiled loop
            wherever it applies; the two compute the same updates. A closed-form
            objective (``"low_rank_ridge"``) is solved in one step either way.

    Returns:
        The trained inference model and its curves.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=50, num_items=40, interactions_per_user=5)
        >>> softmax = TrainSettings(epochs=2, embedding_dim=4, objective="sampled_softmax")
        >>> len(fit_recommender(data, softmax, verbose=0).loss)
        2
        >>> fit_recommender(data, TrainSettings(embedding_dim=4), verbose=0).epochs
        1
    """
    settings = settings or TrainSettings()
    if len(train) == 0:
        raise ValueError("No training positives.")
    keras.utils.set_random_seed(settings.seed)
    objective = settings.resolved_objective(train.num_items)
    closed_form = not settings.has_epochs(train.num_items)
    compiled = not closed_form and use_compiled_loop(objective, compiled_loop)
    model = build_recommender(
        train.num_users,
        train.num_items,
        settings.embedding_dim,
        settings.l2_reg,
        k=settings.k,
        normalization=settings.normalization,
    )
    parts = recommender_parts(model)
    tracker = None if validation is None else _ValidationTracker(model, validation, settings.k)
    epochs = EpochLog(tracker=tracker, verbose=verbose,
                      total=1 if closed_form else settings.epochs, patience=settings.patience)
    start = time.perf_counter()
    if closed_form:
        fit_closed_form(train, settings, parts, epochs)
    elif compiled:
        fit_compiled(train, settings, parts, epochs)
    else:
        fit_keras(train, settings, parts, objective, epochs)
    seconds = time.perf_counter() - start
    return FitResult(
        model=model,
        objective=objective,
        loss=epochs.loss,
        validation=epochs.tracker.metrics if epochs.tracker is not None else [],
        seconds=seconds,
        epoch_seconds=epochs.seconds,
        num_positives=len(train),
        epochs=len(epochs.loss),
    )


@dataclass(frozen=True)
class EpochChoice:
    """The epoch count `choose_epochs` picked, and what it was picked from.

    Attributes:
        epochs: The chosen count (1-based best epoch of the smoothed scores).
        max_epochs: ``settings.epochs`` (the most the selection fit could run).
        patience: ``settings.patience``.
        scores: Validation score (mean of HR@k and NDCG@k) after each epoch run.
        seconds: Wall time of the selection fit.
    """

    epochs: int
    max_epochs: int
    patience: int
    scores: list[float]
    seconds: float

    def record(self) -> dict[str, object]:
        """JSON-ready facts (the ``epoch_choice`` entry of the train summary)."""
        return {"epochs": self.epochs, "max_epochs": self.max_epochs,
                "patience": self.patience, "epochs_run": len(self.scores),
                "validation_scores": [round(v, 5) for v in self.scores],
                "seconds": round(self.seconds, 3)}


def choose_epochs(train: Interactions, settings: TrainSettings, *,
                  verbose: int = 0) -> EpochChoice | None:
    """Chooses the epoch count on a validation split carved from ``train``.

    Each user's latest positive of ``train`` is held out; a *selection fit* on the rest
    records the validation score after every epoch and stops early
    (`kmr.training.early_stopping`); the best epoch of the smoothed scores is the count.
    Returns None (keep ``settings.epochs``) when ``settings.patience`` is 0, the
    objective has no epochs (closed form) or no user has a positive to hold out.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=60, num_items=40, interactions_per_user=8)
        >>> softmax = TrainSettings(epochs=4, embedding_dim=4, objective="sampled_softmax")
        >>> choice = choose_epochs(data, softmax)
        >>> 1 <= choice.epochs <= len(choice.scores) <= 4
        True
        >>> choose_epochs(data, TrainSettings(objective="low_rank_ridge")) is None
        True
    """
    if settings.patience <= 0 or not settings.has_epochs(train.num_items):
        return None
    validation = _at_most_users(holdout_split(train, seed=settings.seed), settings.seed)
    if len(validation.test_users) == 0:
        return None
    _say(verbose, f"choosing the epoch count (at most {settings.epochs}, patience "
         f"{settings.patience}) on {len(validation.test_users)} validation positives")
    fit = fit_recommender(validation.train, settings, validation=validation, verbose=verbose)
    scores = [(m.hit_rate + m.ndcg) / 2 for m in fit.validation]
    return EpochChoice(best_epoch(scores), settings.epochs, settings.patience, scores,
                       fit.seconds)


def with_chosen_epochs(train: Interactions, settings: TrainSettings, *,
                       verbose: int = 0) -> tuple[TrainSettings, EpochChoice | None]:
    """``settings`` with the epoch count `choose_epochs` picks on ``train`` (patience 0).

    What `train_recommender` fits with; the settings come back unchanged (and the
    choice is None) when `choose_epochs` keeps ``settings.epochs``.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=60, num_items=40, interactions_per_user=8)
        >>> softmax = TrainSettings(epochs=4, embedding_dim=4, objective="sampled_softmax")
        >>> chosen, choice = with_chosen_epochs(data, softmax)
        >>> chosen.epochs == choice.epochs, chosen.patience
        (True, 0)
    """
    choice = choose_epochs(train, settings, verbose=verbose)
    if choice is None:
        return settings, None
    return replace(settings, epochs=choice.epochs, patience=0), choice


# Per-epoch validation ranks the whole catalogue for each validation user: a sample
# bounds its cost on large data (standard error of HR@10 near 0.1 at 10k users: ~0.003).
MAX_VALIDATION_USERS = 10_000


def _at_most_users(split: HoldoutSplit, seed: int) -> HoldoutSplit:
    users = np.unique(split.test_users)
    if len(users) <= MAX_VALIDATION_USERS:
        return split
    keep = np.random.default_rng(seed).choice(users, MAX_VALIDATION_USERS, replace=False)
    mask = np.isin(split.test_users, keep)
    return HoldoutSplit(split.train, split.test_users[mask], split.test_items[mask])


def train_recommender(
    data: Interactions,
    settings: TrainSettings | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    holdout_per_user: int = 1,
    refit: bool = True,
    verbose: int = 1,
) -> TrainResult:
    """The train job: split, fit, evaluate against popularity, refit on all rows, save.

    Each user's latest positive (random one without timestamps) is held out; the
    *holdout fit* on the rest gives the metrics. With ``refit`` (default) the *final
    fit* then trains a fresh model with the same settings and epoch count on all rows,
    held-out positives included, and that model is the one returned and saved: the
    served model has seen each user's most recent interaction. Without ``refit`` the
    holdout fit is saved (the metrics then describe the saved model exactly).

    Args:
        data: All positives (e.g. from `kmr.data.files.load_interactions` or
            `kmr.data.synthetic.make_synthetic`).
        settings: Hyper-parameters (default: `TrainSettings()`).
        out_dir: If given, the artifacts folder to write (atomically; see
            `kmr.training.artifacts.write_artifacts`).
        holdout_per_user: Positives held out per user for the test metrics.
        refit: Fit the saved model on all rows after evaluating (default True).
        verbose: 0 silent; 1 prints epoch lines and the metrics table.

    Returns:
        The trained model, metrics, settings, data summary and output folder.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=100, num_items=60, interactions_per_user=6)
        >>> result = train_recommender(data, TrainSettings(epochs=1, embedding_dim=4),
        ...                            verbose=0)
        >>> result.metrics["model"].num_users, result.fit.num_positives == len(data)
        (100, True)
        >>> kept = train_recommender(data, TrainSettings(epochs=1, embedding_dim=4),
        ...                          refit=False, verbose=0)
        >>> kept.fit is kept.holdout_fit, kept.fit.num_positives == len(data) - 100
        (True, True)
    """
    settings = settings or TrainSettings()
    if out_dir is not None:
        check_output_dir(out_dir)  # fail before minutes of training, not after
    split = holdout_split(data, holdout_per_user, seed=settings.seed)
    settings, choice = with_chosen_epochs(split.train, settings, verbose=verbose)
    if choice is not None:
        _say(verbose, f"chose {choice.epochs} epochs (validation scores: "
             f"{', '.join(f'{v:.4f}' for v in choice.scores)})")
    _say(verbose, f"holdout fit on {len(split.train)} rows ({len(split.test_users)} held out)")
    holdout = fit_recommender(split.train, settings, verbose=verbose)
    metrics = {
        "model": evaluate_ranking(embedding_scorer(holdout.model), split, settings.k),
        "popularity": evaluate_ranking(popularity_scorer(split.train), split, settings.k),
    }
    if verbose:
        print(format_metrics_table(metrics))
    final = holdout
    if refit:
        how = (f"{settings.epochs} epochs" if settings.has_epochs(data.num_items)
               else "closed form")
        _say(verbose, f"final fit on all {len(data)} rows, {how}")
        final = fit_recommender(data, settings, verbose=verbose)
    result = TrainResult(
        fit=final,
        metrics=metrics,
        settings=settings,
        summary={**_summary(data, split, holdout, final, holdout_per_user),
                 "epoch_choice": choice.record() if choice is not None else None},
        holdout_fit=holdout,
    )
    _say(verbose, _speed_line(result))
    if out_dir is not None:
        result.output_dir = write_artifacts(result, data, out_dir)
    return result


def _summary(
    data: Interactions, split: HoldoutSplit, holdout: FitResult, final: FitResult,
    holdout_per_user: int,
) -> dict[str, object]:
    return {
        "source": data.source,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_positives": len(data),
        "num_train_positives": len(split.train),
        "num_test_positives": len(split.test_users),
        "holdout": "latest by timestamp" if data.timestamps is not None else "random",
        "holdout_per_user": holdout_per_user,
        "objective": holdout.objective,
        "train_seconds": round(holdout.seconds, 3),
        "refit": final is not holdout,
        "final_fit_positives": final.num_positives,
        "final_fit_seconds": round(final.seconds, 3),
    }


def _speed_line(result: TrainResult) -> str:
    fits = [("holdout fit", result.holdout_fit or result.fit)]
    if result.refit:
        fits.append(("final fit", result.fit))
    return "; ".join(
        f"{name}: {f.num_positives} rows x {f.epochs} epochs in {f.seconds:.1f} s "
        f"= {f.interactions_per_second:,.0f} interactions/s"
        for name, f in fits
    )


def _say(verbose: int, line: str) -> None:
    if verbose:
        print(line, flush=True)


class _ValidationTracker:
    def __init__(self, model: keras.Model, split: HoldoutSplit, k: int) -> None:
        self._scorer = embedding_scorer(model)
        self._split = split
        self._k = k
        self.metrics: list[RankingMetrics] = []

    def evaluate(self) -> None:
        self.metrics.append(evaluate_ranking(self._scorer, self._split, self._k))
