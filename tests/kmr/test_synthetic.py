"""Tests of kmr.data.synthetic.make_synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from kmr.data.synthetic import make_synthetic


def test_make_synthetic_returns_equal_data_when_seed_equal():
    a = make_synthetic(num_users=50, num_items=60, interactions_per_user=6, seed=7)
    b = make_synthetic(num_users=50, num_items=60, interactions_per_user=6, seed=7)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.timestamps, b.timestamps)


def test_make_synthetic_returns_other_data_when_seed_differs():
    a = make_synthetic(num_users=50, num_items=60, interactions_per_user=6, seed=1)
    b = make_synthetic(num_users=50, num_items=60, interactions_per_user=6, seed=2)
    assert not np.array_equal(a.items, b.items)


def test_make_synthetic_gives_distinct_items_per_user_when_sampled():
    data = make_synthetic(num_users=100, num_items=40, interactions_per_user=10)
    assert len(data) == 1000
    pairs = data.users * data.num_items + data.items
    assert len(np.unique(pairs)) == len(pairs)
    assert (data.positives_per_user() == 10).all()


def test_make_synthetic_skews_popularity_when_exponent_positive():
    data = make_synthetic(num_users=500, num_items=200, interactions_per_user=10)
    counts = np.sort(data.item_counts())[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.2  # a flat catalogue would give ~0.1


def test_make_synthetic_raises_when_too_many_interactions_per_user():
    with pytest.raises(ValueError, match="interactions_per_user"):
        make_synthetic(num_users=5, num_items=10, interactions_per_user=10)
