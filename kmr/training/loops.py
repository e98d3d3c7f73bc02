"""The ways the tables are trained, and the per-epoch log they report to.

- `fit_compiled`: `SampledSoftmaxLoop` (sampled softmax on TensorFlow), the default
  where it applies (`compiled_loop_applies`);
- `fit_keras`: Keras' ``fit`` of `ObjectiveModel` with `LazyAdam` (every gradient
  objective and backend; the same updates for sampled softmax);
- `fit_closed_form`: the ``"low_rank_ridge"`` solution (`kmr.training.low_rank_ridge`),
  written into the tables as one "epoch".

Each trains the layers of ``parts`` in place and reports each epoch to an `EpochLog`
(loss, wall seconds, validation, progress line).

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> from kmr.models import build_recommender, recommender_parts
    >>> data = make_synthetic(num_users=20, num_items=10, interactions_per_user=3)
    >>> parts = recommender_parts(build_recommender(20, 10, embedding_dim=4))
    >>> log = EpochLog(tracker=None, verbose=0, total=2)
    >>> fit_compiled(data, TrainSettings(epochs=2, embedding_dim=4), parts, log)
    >>> len(log.loss), len(log.seconds)
    (2, 2)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kmr.data.interactions import Interactions
from kmr.models import RecommenderParts
from kmr.training.early_stopping import stalled
from kmr.training.low_rank_ridge import low_rank_ridge_tables
from kmr.training.objectives import ObjectiveModel
from kmr.training.optimizers import LazyAdam
from kmr.training.sampled_softmax_loop import (
    EpochBatches,
    LoopSettings,
    SampledSoftmaxLoop,
    epoch_batches,
)
from kmr.training.settings import TrainSettings

# XLA fuses the (B, B) logit block's element-wise work; with the row-sparse LazyAdam
# (no dense table updates) it measured ~1.7x faster than without on 2 CPU cores.
_JIT = True
# Training steps per compiled call: removes the per-step Python/dispatch overhead.
_STEPS_PER_EXECUTION = 64


def _steps_per_execution(num_rows: int, batch_size: int) -> int:
    """Steps per compiled call: `_STEPS_PER_EXECUTION`, at most one epoch's steps."""
    steps = -(-num_rows // batch_size)
    return max(1, min(_STEPS_PER_EXECUTION, steps))


def compiled_loop_applies(objective: str) -> bool:
    """Sampled softmax on TensorFlow runs `SampledSoftmaxLoop`; the rest runs Keras' fit."""
    return objective == "sampled_softmax" and keras.backend.backend() == "tensorflow"


def use_compiled_loop(objective: str, asked: bool | None) -> bool:
    """Whether to train with the compiled loop: ``asked`` (None: wherever it applies).

    Raises:
        ValueError: The compiled loop was asked for where it does not apply.

    Example:
        >>> use_compiled_loop("bpr", None), use_compiled_loop("sampled_softmax", False)
        (False, False)
    """
    if asked is None:
        return compiled_loop_applies(objective)
    if asked and not compiled_loop_applies(objective):
        raise ValueError(
            "Invalid value received for argument `compiled_loop`: the compiled loop "
            "trains objective='sampled_softmax' on the TensorFlow backend only. Received: "
            f"objective={objective!r}, backend={keras.backend.backend()!r}"
        )
    return bool(asked)


def fit_compiled(
    train: Interactions, settings: TrainSettings, parts: RecommenderParts, epochs: EpochLog
) -> None:
    loop = SampledSoftmaxLoop(
        parts.embedding,
        parts.similarity,
        train.item_counts(),
        LoopSettings(settings.learning_rate, settings.temperature, settings.logq_weight),
    )
    shuffle = np.random.default_rng(settings.seed)

    def cut(order: np.ndarray) -> EpochBatches:
        return epoch_batches(train.users, train.items, settings.batch_size, order)

    # The next epoch's batches are cut on the host while this one trains: the compiled
    # steps keep one core busy, the other would idle.
    with ThreadPoolExecutor(max_workers=1) as host:
        upcoming = host.submit(cut, shuffle.permutation(len(train)))
        for epoch in range(settings.epochs):
            epochs.begin()
            batches = upcoming.result()
            if epoch + 1 < settings.epochs:
                upcoming = host.submit(cut, shuffle.permutation(len(train)))
            epochs.end(loop.run_epoch(batches))
            if epochs.stop:
                break


def fit_keras(
    train: Interactions,
    settings: TrainSettings,
    parts: RecommenderParts,
    objective: str,
    epochs: EpochLog,
) -> None:
    trainer = ObjectiveModel(
        parts.embedding,
        parts.similarity,
        objective,
        item_counts=train.item_counts(),
        temperature=settings.temperature,
        logq_weight=settings.logq_weight,
        num_negatives=settings.num_negatives,
        seed=settings.seed,
    )
    trainer.compile(
        optimizer=LazyAdam(settings.learning_rate),
        jit_compile=_JIT,
        steps_per_execution=_steps_per_execution(len(train), settings.batch_size),
    )
    trainer.fit(
        {"user": train.users, "item": train.items},
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_KerasEpochs(epochs)],
    )


def fit_closed_form(
    train: Interactions, settings: TrainSettings, parts: RecommenderParts, epochs: EpochLog
) -> None:
    """Writes the ``"low_rank_ridge"`` tables into ``parts`` (requires ``"sqrt_dim"``)."""
    if parts.similarity.normalization != "sqrt_dim":
        raise ValueError(
            "Invalid value received for argument `normalization`: objective="
            "'low_rank_ridge' scores with plain dot products, so it needs "
            "normalization='sqrt_dim' (cosine would rescale each item and change the "
            f"ranking). Received: normalization={parts.similarity.normalization!r}"
        )
    epochs.begin()
    tables = low_rank_ridge_tables(train, settings.embedding_dim, settings.ridge_shrinkage,
                                   settings.seed)
    parts.embedding.user_embeddings.assign(tables.users)
    parts.embedding.item_embeddings.assign(tables.items)
    epochs.end(tables.loss)


@dataclass
class EpochLog:
    """Per-epoch loss, time, validation and progress line, whichever loop trains.

    ``tracker``: None, or an object whose ``evaluate()`` runs after each epoch and whose
    ``metrics`` (`RankingMetrics` per epoch) give the validation `scores`. With a tracker
    and ``patience > 0``, `stop` turns True once they stall
    (`kmr.training.early_stopping.stalled`), and the loops stop there.
    """

    tracker: Any
    verbose: int
    total: int
    patience: int = 0
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    _start: float = 0.0

    @property
    def scores(self) -> list[float]:
        """Validation score per epoch: mean of HR@k and NDCG@k (empty without a tracker)."""
        if self.tracker is None:
            return []
        return [(m.hit_rate + m.ndcg) / 2 for m in self.tracker.metrics]

    @property
    def stop(self) -> bool:
        """Whether early stopping says to stop now."""
        return self.tracker is not None and stalled(self.scores, self.patience)

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self, loss: float) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.loss.append(float(loss))
        if self.tracker is not None:
            self.tracker.evaluate()
        if self.verbose:
            print(f"Epoch {len(self.loss)}/{self.total} - {self.seconds[-1]:.1f}s - "
                  f"loss: {loss:.4f}", flush=True)


class _KerasEpochs(keras.callbacks.Callback):
    def __init__(self, log: EpochLog) -> None:
        super().__init__()
        self._log = log

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._log.begin()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._log.end(float((logs or {}).get("loss", float("nan"))))
        if self._log.stop:
            self.model.stop_training = True
