"""The saved model is fit on all rows: each user's held-out latest positive included."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from export.cli import main as cli_main
from kmr import contract
from kmr.data.interactions import Interactions
from kmr.data.synthetic import make_synthetic
from kmr.models import build_recommender, recommender_parts
from kmr.training.fit import TrainSettings, train_recommender
from kmr.vocabulary import Vocabulary

SETTINGS = TrainSettings(epochs=2, embedding_dim=8, batch_size=64, objective="sampled_softmax")
NEW_ITEM_ID = 10_000


@pytest.fixture(scope="module")
def data() -> Interactions:
    """Synthetic rows plus user 0's latest positive: an item nobody else has."""
    base = make_synthetic(num_users=60, num_items=30, interactions_per_user=5, seed=0)
    return Interactions(
        users=np.append(base.users, 0),
        items=np.append(base.items, base.num_items),
        timestamps=np.append(base.timestamps, base.timestamps.max() + 1),
        user_vocab=base.user_vocab,
        item_vocab=Vocabulary([*base.item_vocab.ids, NEW_ITEM_ID], name="item"),
        source="synthetic + one new latest item",
    )


def _saved_item_row(out, item: int) -> np.ndarray:
    model = keras.saving.load_model(out / contract.MODEL_FILE)
    return recommender_parts(model).embedding.item_embeddings.numpy()[item]


def _initial_item_row(data: Interactions, item: int) -> np.ndarray:
    keras.utils.set_random_seed(SETTINGS.seed)  # as fit_recommender starts
    model = build_recommender(data.num_users, data.num_items, SETTINGS.embedding_dim,
                              SETTINGS.l2_reg, k=SETTINGS.k)
    return recommender_parts(model).embedding.item_embeddings.numpy()[item]


def test_saved_model_is_trained_on_held_out_latest_positive_when_refit(tmp_path, data):
    new_item = data.num_items - 1
    refit = train_recommender(data, SETTINGS, tmp_path / "refit", verbose=0)
    kept = train_recommender(data, SETTINGS, tmp_path / "kept", refit=False, verbose=0)
    # The new item's only row is user 0's held-out latest positive: the holdout fit
    # never sees it (its row keeps its initial value); the saved final fit does.
    initial = _initial_item_row(data, new_item)
    np.testing.assert_array_equal(_saved_item_row(tmp_path / "kept", new_item), initial)
    assert not np.allclose(_saved_item_row(tmp_path / "refit", new_item), initial)
    assert refit.fit.num_positives == len(data) == kept.fit.num_positives + data.num_users
    # The metrics describe the holdout fit in both runs.
    assert refit.metrics["model"] == kept.metrics["model"]

    metrics = json.loads((tmp_path / "refit" / contract.METRICS_FILE).read_text())
    assert metrics["saved_model"] == "final_fit" and "recall@10" in metrics["model"]
    assert metrics["final_fit"]["trained_on"] == "all rows"
    assert metrics["final_fit"]["num_positives"] == len(data)
    chosen = metrics["epoch_choice"]["epochs"]
    assert 1 <= chosen <= SETTINGS.epochs == metrics["epoch_choice"]["max_epochs"]
    assert metrics["final_fit"]["epochs"] == metrics["holdout_fit"]["epochs"] == chosen
    assert metrics["holdout_fit"]["num_positives"] == len(data) - data.num_users
    kept_metrics = json.loads((tmp_path / "kept" / contract.METRICS_FILE).read_text())
    assert kept_metrics["saved_model"] == "holdout_fit" and kept_metrics["final_fit"] is None


def test_saved_closed_form_model_has_the_held_out_latest_item_when_refit(tmp_path, data):
    settings = TrainSettings(objective="low_rank_ridge", embedding_dim=8)
    new_item = data.num_items - 1
    train_recommender(data, settings, tmp_path / "refit", verbose=0)
    train_recommender(data, settings, tmp_path / "kept", refit=False, verbose=0)
    # Closed form: an item without training rows gets an all-zero row.
    assert not _saved_item_row(tmp_path / "kept", new_item).any()
    assert _saved_item_row(tmp_path / "refit", new_item).any()


def test_train_cli_saves_holdout_fit_when_no_refit(tmp_path):
    out = tmp_path / "art"
    code = cli_main([
        "train", "--out", str(out), "--epochs", "1", "--dim", "8", "--quiet", "--no-refit",
        "--synthetic-users", "100", "--synthetic-items", "50",
    ])
    metrics = json.loads((out / contract.METRICS_FILE).read_text())
    assert code == 0 and metrics["saved_model"] == "holdout_fit"
    assert metrics["holdout_fit"]["interactions_per_second"] > 0
