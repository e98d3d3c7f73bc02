"""Trains the kmr recommender on positives and evaluates it against popularity.

`fit_recommender` trains one model; `train_recommender` is the whole job the CLI
wraps: hold out each user's latest positive, fit on the rest, rank the full catalogue
for the held-out users (model and popularity baseline) and optionally write the
artifacts folder (see `kmr.training.artifacts`).

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> data = make_synthetic(num_users=200, num_items=100, interactions_per_user=10)
    >>> result = train_recommender(data, TrainSettings(epochs=2, embedding_dim=8), verbose=0)
    >>> sorted(result.metrics)
    ['model', 'popularity']
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kmr.data.interactions import Interactions
from kmr.models import build_recommender, recommender_parts
from kmr.training.artifacts import check_output_dir, write_artifacts
from kmr.training.evaluation import (
    HoldoutSplit,
    RankingMetrics,
    Scorer,
    evaluate_ranking,
    format_metrics_table,
    holdout_split,
    popularity_scorer,
)
from kmr.training.objectives import ObjectiveModel, pairwise_scores
from kmr.training.settings import TrainSettings

_JIT = False  # XLA measured slower here (compile time, scatter updates)


@dataclass
class FitResult:
    """A trained inference model and its per-epoch curves.

    Attributes:
        model: The saved-model graph (`kmr.models.build_recommender`), trained.
        objective: The objective used (``"auto"`` resolved).
        loss: Training loss per epoch.
        validation: Per-epoch validation metrics, when a validation split was given.
        seconds: Wall time of the fit.
    """

    model: keras.Model
    objective: str
    loss: list[float]
    validation: list[RankingMetrics] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TrainResult:
    """What `train_recommender` produced.

    Attributes:
        fit: The trained model and its curves.
        metrics: ``{"model": ..., "popularity": ...}`` on the held-out positives.
        settings: The settings used.
        summary: Facts about the data and split (JSON-ready).
        output_dir: The artifacts folder, if one was written.
    """

    fit: FitResult
    metrics: dict[str, RankingMetrics]
    settings: TrainSettings
    summary: dict[str, object]
    output_dir: Path | None = None

    @property
    def model(self) -> keras.Model:
        """The trained inference model."""
        return self.fit.model


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
) -> FitResult:
    """Builds the recommender and trains it on ``train``'s positives.

    Deterministic: `keras.utils.set_random_seed(settings.seed)` is called first, so
    two runs with equal settings and data give identical weights on CPU.

    Args:
        train: Training positives (their vocabularies size the tables).
        settings: Hyper-parameters (default: `TrainSettings()`).
        validation: If given, ranking metrics on it are recorded after every epoch.
        verbose: 0 silent, 1 one line per epoch with the loss (Keras ``verbose=2``).

    Returns:
        The trained inference model and its curves.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=50, num_items=40, interactions_per_user=5)
        >>> fit = fit_recommender(data, TrainSettings(epochs=2, embedding_dim=4), verbose=0)
        >>> len(fit.loss)
        2
    """
    settings = settings or TrainSettings()
    if len(train) == 0:
        raise ValueError("No training positives.")
    keras.utils.set_random_seed(settings.seed)
    objective = settings.resolved_objective(train.num_items)
    model = build_recommender(
        train.num_users,
        train.num_items,
        settings.embedding_dim,
        settings.l2_reg,
        k=settings.k,
        normalization=settings.normalization,
    )
    parts = recommender_parts(model)
    trainer = ObjectiveModel(
        parts.embedding,
        parts.similarity,
        objective,
        item_counts=train.item_counts(),
        temperature=settings.temperature,
        num_negatives=settings.num_negatives,
        seed=settings.seed,
    )
    trainer.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate), jit_compile=_JIT
    )
    callbacks: list[keras.callbacks.Callback] = []
    tracker = None
    if validation is not None:
        tracker = _ValidationTracker(model, validation, settings.k)
        callbacks.append(tracker)
    start = time.perf_counter()
    history = trainer.fit(
        {"user": train.users, "item": train.items},
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        shuffle=True,
        verbose=2 if verbose else 0,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    return FitResult(
        model=model,
        objective=objective,
        loss=[float(v) for v in history.history.get("loss", [])],
        validation=tracker.metrics if tracker is not None else [],
        seconds=seconds,
    )


def train_recommender(
    data: Interactions,
    settings: TrainSettings | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    holdout_per_user: int = 1,
    verbose: int = 1,
) -> TrainResult:
    """The train job: split, fit, evaluate against popularity, optionally write artifacts.

    Each user's latest positive (random one without timestamps) is held out; the model
    is fit on the rest, so the saved model is exactly the one the metrics describe.

    Args:
        data: All positives (e.g. from `kmr.data.files.load_interactions` or
            `kmr.data.synthetic.make_synthetic`).
        settings: Hyper-parameters (default: `TrainSettings()`).
        out_dir: If given, the artifacts folder to write (atomically; see
            `kmr.training.artifacts.write_artifacts`).
        holdout_per_user: Positives held out per user for the test metrics.
        verbose: 0 silent; 1 prints epoch lines and the metrics table.

    Returns:
        The trained model, metrics, settings, data summary and output folder.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=100, num_items=60, interactions_per_user=6)
        >>> result = train_recommender(data, TrainSettings(epochs=1, embedding_dim=4),
        ...                            verbose=0)
        >>> result.metrics["model"].num_users
        100
    """
    settings = settings or TrainSettings()
    if out_dir is not None:
        check_output_dir(out_dir)  # fail before minutes of training, not after
    split = holdout_split(data, holdout_per_user, seed=settings.seed)
    fit = fit_recommender(split.train, settings, verbose=verbose)
    metrics = {
        "model": evaluate_ranking(embedding_scorer(fit.model), split, settings.k),
        "popularity": evaluate_ranking(popularity_scorer(split.train), split, settings.k),
    }
    summary = {
        "source": data.source,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_positives": len(data),
        "num_train_positives": len(split.train),
        "num_test_positives": len(split.test_users),
        "holdout": "latest by timestamp" if data.timestamps is not None else "random",
        "holdout_per_user": holdout_per_user,
        "objective": fit.objective,
        "train_seconds": round(fit.seconds, 3),
    }
    result = TrainResult(fit=fit, metrics=metrics, settings=settings, summary=summary)
    if verbose:
        print(format_metrics_table(metrics))
    if out_dir is not None:
        result.output_dir = write_artifacts(result, data, out_dir)
    return result


class _ValidationTracker(keras.callbacks.Callback):
    def __init__(self, model: keras.Model, split: HoldoutSplit, k: int) -> None:
        super().__init__()
        self._scorer = embedding_scorer(model)
        self._split = split
        self._k = k
        self.metrics: list[RankingMetrics] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.metrics.append(evaluate_ranking(self._scorer, self._split, self._k))
