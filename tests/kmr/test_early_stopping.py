"""Early stopping: the smoothed best epoch, the stall rule, and the loops that obey it."""

from __future__ import annotations

import numpy as np
import pytest

from kmr.data.synthetic import make_synthetic
from kmr.models import build_recommender, recommender_parts
from kmr.training.early_stopping import best_epoch, smoothed, stalled
from kmr.training.evaluation import RankingMetrics
from kmr.training.fit import TrainSettings, choose_epochs, train_recommender
from kmr.training.loops import EpochLog, fit_compiled, fit_keras


def test_best_epoch_ignores_a_lone_spike_when_neighbours_are_low():
    scores = [0.05, 0.05, 0.15, 0.05, 0.05, 0.08, 0.09, 0.09, 0.09, 0.05]
    assert int(np.argmax(scores)) + 1 == 3  # the raw peak is a one-epoch spike
    assert best_epoch(scores) == 8  # the plateau's centre wins (0.090 vs 0.083)
    assert smoothed([1.0]).tolist() == [1.0]


def test_stalled_needs_patience_epochs_without_a_new_trailing_high():
    rising = [0.01 * i for i in range(10)]
    assert not stalled(rising, patience=3)
    peaked = rising[:6] + [0.03, 0.02, 0.01, 0.0]  # trailing high: epoch 6 (0.04)
    assert stalled(peaked, patience=4) and not stalled(peaked, patience=5)
    assert not stalled(peaked, patience=0)
    with pytest.raises(ValueError, match="No validation scores"):
        best_epoch([])


class _FallingTracker:
    """Validation metrics that peak after epoch 2 and then fall."""

    def __init__(self) -> None:
        self.metrics: list[RankingMetrics] = []

    def evaluate(self) -> None:
        value = [0.05, 0.09, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01][len(self.metrics)]
        self.metrics.append(RankingMetrics(value, value, value, 10, 5))


@pytest.mark.parametrize("fit", [fit_compiled, fit_keras])
def test_loops_stop_after_patience_epochs_when_validation_falls(fit):
    data = make_synthetic(num_users=30, num_items=20, interactions_per_user=4)
    settings = TrainSettings(epochs=8, embedding_dim=4, patience=2)
    parts = recommender_parts(build_recommender(data.num_users, data.num_items, 4))
    log = EpochLog(tracker=_FallingTracker(), verbose=0, total=8, patience=2)
    args = (data, settings, parts) if fit is fit_compiled else (data, settings, parts,
                                                                   "sampled_softmax")
    fit(*args, log)
    # Trailing 3-epoch means: 0.050, 0.070, 0.073, 0.077 (epoch 4, the high), 0.060,
    # 0.043: two epochs without a new high after epoch 4, so the loop stops after 6.
    assert len(log.loss) == 6


def test_choose_epochs_returns_none_when_patience_is_zero():
    data = make_synthetic(num_users=30, num_items=20, interactions_per_user=4)
    assert choose_epochs(data, TrainSettings(epochs=2, embedding_dim=4, patience=0)) is None


def test_train_uses_exactly_the_given_epochs_when_patience_is_zero():
    data = make_synthetic(num_users=40, num_items=20, interactions_per_user=5)
    settings = TrainSettings(epochs=3, embedding_dim=4, patience=0, objective="sampled_softmax")
    result = train_recommender(data, settings, verbose=0)
    assert result.fit.epochs == result.holdout_fit.epochs == 3
    assert result.summary["epoch_choice"] is None


def test_train_records_the_choice_when_patience_is_positive():
    data = make_synthetic(num_users=40, num_items=20, interactions_per_user=6)
    result = train_recommender(
        data, TrainSettings(epochs=4, embedding_dim=4, objective="sampled_softmax"), verbose=0)
    choice = result.summary["epoch_choice"]
    assert choice["epochs"] == result.fit.epochs == result.holdout_fit.epochs
    assert len(choice["validation_scores"]) == choice["epochs_run"] <= 4
    assert np.isfinite(choice["validation_scores"]).all()
