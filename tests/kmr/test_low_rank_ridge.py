"""The closed-form objective: its tables are the rank-D ridge solution, whatever the data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kmr.data.interactions import Interactions
from kmr.data.synthetic import make_synthetic
from kmr.training import low_rank_ridge
from kmr.training.fit import (
    TrainSettings,
    choose_epochs,
    embedding_scorer,
    fit_recommender,
    train_recommender,
)
from kmr.training.low_rank_ridge import low_rank_ridge_tables, positives_matrix
from kmr.training.tune import tune
from kmr.vocabulary import Vocabulary

RIDGE = TrainSettings(objective="low_rank_ridge", embedding_dim=6)


def _random_positives(num_users: int, num_items: int, seed: int) -> Interactions:
    rng = np.random.default_rng(seed)
    dense = rng.random((num_users, num_items)) < 0.2
    dense[np.arange(num_users), rng.integers(0, num_items, num_users)] = True
    return _interactions(*np.nonzero(dense), num_users, num_items)


def _interactions(users, items, num_users: int, num_items: int) -> Interactions:
    return Interactions(users, items, None, Vocabulary(list(range(num_users))),
                        Vocabulary(list(range(num_items))))


def _brute_force(data: Interactions, dim: int, shrinkage: float):
    """W = V_k diag(s^2 / (s^2 + lam)) V_k^T from the item Gram's eigenvectors."""
    x = positives_matrix(data).toarray()
    eigenvalues, vectors = np.linalg.eigh(x.T @ x)
    top = np.argsort(eigenvalues)[::-1][:dim]
    squared, v = np.clip(eigenvalues[top], 0, None), vectors[:, top]
    lam = shrinkage * x.sum() / x.shape[1]
    w = v @ np.diag(squared / (squared + lam)) @ v.T
    loss = (((x - x @ w) ** 2).sum() + lam * (w**2).sum()) / x.sum()
    return x @ w, loss


@pytest.mark.parametrize("exact_side_max", [4096, 0], ids=["gram", "svds"])
@pytest.mark.parametrize(("num_users", "num_items"), [(40, 25), (25, 40)])
def test_tables_score_like_brute_force_ridge_when_either_side_is_smaller(
        monkeypatch, exact_side_max, num_users, num_items):
    monkeypatch.setattr(low_rank_ridge, "_EXACT_SIDE_MAX", exact_side_max)
    data = _random_positives(num_users, num_items, seed=num_users)
    tables = low_rank_ridge_tables(data, dim=5, shrinkage=3.0)
    scores, loss = _brute_force(data, dim=5, shrinkage=3.0)
    np.testing.assert_allclose(tables.users @ tables.items.T, scores, atol=1e-5)
    assert tables.loss == pytest.approx(loss, rel=1e-6)


def test_tables_pad_with_zero_columns_when_dim_exceeds_rank():
    data = _random_positives(6, 30, seed=1)
    tables = low_rank_ridge_tables(data, dim=16, shrinkage=1.0)
    scores, _ = _brute_force(data, dim=16, shrinkage=1.0)
    assert tables.users.shape == (6, 16) and not tables.users[:, 6:].any()
    np.testing.assert_allclose(tables.users @ tables.items.T, scores, atol=1e-5)


def test_scores_do_not_change_when_every_user_is_duplicated():
    # One shrinkage means the same at any data size: copies of every user double both
    # the singular values squared and lam, so each user's scores stay the same.
    data = _random_positives(30, 20, seed=2)
    copies = _interactions(np.concatenate([data.users, data.users + 30]),
                           np.concatenate([data.items, data.items]), 60, 20)
    a = low_rank_ridge_tables(data, dim=4, shrinkage=5.0)
    b = low_rank_ridge_tables(copies, dim=4, shrinkage=5.0)
    np.testing.assert_allclose(a.users @ a.items.T, (b.users @ b.items.T)[:30], atol=1e-5)


@pytest.mark.parametrize("shrinkage", [-1.0, float("nan"), float("inf")])
def test_tables_refuse_shrinkage_when_negative_or_not_finite(shrinkage):
    with pytest.raises(ValueError, match=f"Received: shrinkage={shrinkage!r}"):
        low_rank_ridge_tables(_random_positives(5, 5, 0), dim=2, shrinkage=shrinkage)


def test_fit_recommender_writes_tables_into_model_when_objective_closed_form():
    data = make_synthetic(num_users=60, num_items=40, interactions_per_user=6)
    fit = fit_recommender(data, RIDGE, verbose=0)
    tables = low_rank_ridge_tables(data, dim=6, shrinkage=RIDGE.ridge_shrinkage)
    served = embedding_scorer(fit.model)(np.arange(60))
    # The similarity divides by sqrt(D): the same ranking as the plain dot product.
    np.testing.assert_allclose(served * np.sqrt(6), tables.users @ tables.items.T, atol=1e-5)
    assert (fit.objective, fit.epochs, fit.loss) == ("low_rank_ridge", 1, [tables.loss])
    again = fit_recommender(data, RIDGE, verbose=0).model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(fit.model.get_weights(), again,
                                                    strict=True))


def test_fit_recommender_refuses_cosine_when_objective_closed_form():
    data = make_synthetic(num_users=20, num_items=10, interactions_per_user=3)
    settings = TrainSettings(objective="low_rank_ridge", normalization="cosine")
    with pytest.raises(ValueError, match="needs normalization='sqrt_dim'.*Received: "
                                         "normalization='cosine'"):
        fit_recommender(data, settings, verbose=0)


def test_train_recommender_skips_epoch_choice_and_refits_when_objective_closed_form():
    data = make_synthetic(num_users=80, num_items=50, interactions_per_user=6)
    assert choose_epochs(data, RIDGE) is None
    result = train_recommender(data, RIDGE, verbose=0)
    records = result.fit_records()
    assert records["epoch_choice"] is None and records["saved_model"] == "final_fit"
    assert records["final_fit"]["num_positives"] == len(data)
    assert result.metrics["model"].hit_rate > result.metrics["popularity"].hit_rate


def test_tune_searches_dim_and_shrinkage_when_objective_closed_form():
    data = make_synthetic(num_users=60, num_items=40, interactions_per_user=6)
    result = tune(data, replace(RIDGE, epochs=2), budget_seconds=60)
    assert [row.changes for row in result.rows] == [
        {}, {"embedding_dim": 64}, {"embedding_dim": 256},
        {"ridge_shrinkage": 3.0}, {"ridge_shrinkage": 30.0},
        {"objective": "sampled_softmax"}]
