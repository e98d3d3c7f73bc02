"""Held-out split per user and full-catalogue ranking metrics (Recall, NDCG, HitRate @k).

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> data = make_synthetic(num_users=100, num_items=50, interactions_per_user=5)
    >>> split = holdout_split(data)
    >>> metrics = evaluate_ranking(popularity_scorer(split.train), split)
    >>> metrics.num_users, 0.0 <= metrics.recall <= 1.0
    (100, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kmr.data.interactions import Interactions

Scorer = Callable[[np.ndarray], np.ndarray]
"""Maps dense user indices ``(b,)`` to scores over the whole catalogue ``(b, num_items)``."""

# Bounds a score block (rows x catalogue) to ~64M floats whatever the catalogue size.
_SCORE_BLOCK = 1 << 26


@dataclass(frozen=True)
class HoldoutSplit:
    """Training rows plus the held-out (user, item) pairs to rank."""

    train: Interactions
    test_users: np.ndarray
    test_items: np.ndarray


@dataclass(frozen=True)
class RankingMetrics:
    """Mean metrics over the users with held-out items.

    Recall@k is hits / held-out items of the user (with one held-out item per user it
    equals HitRate@k); NDCG@k uses binary gains, ideal DCG over min(held-out, k) hits.
    """

    recall: float
    ndcg: float
    hit_rate: float
    k: int
    num_users: int

    def to_dict(self) -> dict[str, float | int]:
        """``{"recall@10": ..., "ndcg@10": ..., "hit_rate@10": ..., "num_users": ...}``."""
        return {
            f"recall@{self.k}": self.recall,
            f"ndcg@{self.k}": self.ndcg,
            f"hit_rate@{self.k}": self.hit_rate,
            "num_users": self.num_users,
        }


def holdout_split(data: Interactions, holdout_per_user: int = 1, seed: int = 0) -> HoldoutSplit:
    """Holds out each user's latest positives (random ones when there are no timestamps).

    A user with ``n >= 2`` positives gives ``min(holdout_per_user, n - 1)`` of them to
    the test side; users with fewer stay in training only. Equal timestamps are broken
    by row order (later row = later), so the split is deterministic.

    Args:
        data: All positives.
        holdout_per_user: How many positives to hold out per user (>= 1).
        seed: Seeds the random holdout used when ``data.timestamps`` is None.

    Returns:
        The split; ``train`` keeps the vocabularies of ``data``.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=10, num_items=30, interactions_per_user=4)
        >>> split = holdout_split(data)
        >>> len(split.train), len(split.test_users)
        (30, 10)
    """
    if holdout_per_user < 1:
        raise ValueError(f"Expected holdout_per_user >= 1. Received: {holdout_per_user}")
    row = np.arange(len(data))
    if data.timestamps is not None:
        time = data.timestamps
    else:
        time = np.random.default_rng(seed).random(len(data))
    order = np.lexsort((row, time, data.users))
    counts = data.positives_per_user()
    group_end = np.cumsum(counts)  # one past each user's last sorted position
    sorted_users = data.users[order]
    from_end = group_end[sorted_users] - 1 - np.arange(len(order))
    held = from_end < np.minimum(holdout_per_user, counts[sorted_users] - 1)
    test_mask = np.zeros(len(data), dtype=bool)
    test_mask[order[held]] = True
    return HoldoutSplit(
        train=data.subset(~test_mask),
        test_users=data.users[test_mask],
        test_items=data.items[test_mask],
    )


def popularity_scorer(train: Interactions) -> Scorer:
    """Scores every item by its number of training positives, the same for every user.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=10, num_items=30, interactions_per_user=4)
        >>> popularity_scorer(data)(np.array([0, 1])).shape == (2, data.num_items)
        True
    """
    counts = train.item_counts().astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def evaluate_ranking(scorer: Scorer, split: HoldoutSplit, k: int = 10) -> RankingMetrics:
    """Ranks the whole catalogue for each test user, training items excluded.

    Args:
        scorer: Scores for a block of users (see `Scorer`).
        split: Training rows (excluded from each user's ranking) and held-out pairs.
        k: Cut-off of the metrics.

    Returns:
        Metrics averaged over the users with held-out items.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> split = holdout_split(make_synthetic(num_users=30, num_items=40,
        ...                                      interactions_per_user=4))
        >>> evaluate_ranking(popularity_scorer(split.train), split, k=5).k
        5
    """
    per_user = ranking_per_user(scorer, split, k)
    return RankingMetrics(
        recall=float(per_user.recall.mean()),
        ndcg=float(per_user.ndcg.mean()),
        hit_rate=float(per_user.hit_rate.mean()),
        k=k,
        num_users=len(per_user.users),
    )


@dataclass(frozen=True)
class PerUserRanking:
    """Each test user's metrics (for standard errors and paired comparisons)."""

    users: np.ndarray
    recall: np.ndarray
    ndcg: np.ndarray
    hit_rate: np.ndarray


def ranking_per_user(scorer: Scorer, split: HoldoutSplit, k: int = 10) -> PerUserRanking:
    """`evaluate_ranking`'s metrics before averaging: one value per test user.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> split = holdout_split(make_synthetic(num_users=30, num_items=40,
        ...                                      interactions_per_user=4))
        >>> per_user = ranking_per_user(popularity_scorer(split.train), split)
        >>> per_user.ndcg.shape, bool((per_user.ndcg <= per_user.hit_rate).all())
        ((30,), True)
    """
    train = split.train
    num_items = train.num_items
    users = np.unique(split.test_users)
    if len(users) == 0:
        raise ValueError("The split holds out no (user, item) pairs to evaluate.")
    n_test = np.bincount(split.test_users, minlength=train.num_users)
    test_keys = np.sort(split.test_users * num_items + split.test_items)
    indptr, train_items = _rows_by_user(train)
    k_eff = min(k, num_items)
    discount = 1.0 / np.log2(np.arange(2, k_eff + 2))
    ideal = np.cumsum(discount)

    recall = np.zeros(len(users))
    ndcg = np.zeros(len(users))
    hit = np.zeros(len(users))
    block = max(1, min(4096, _SCORE_BLOCK // num_items))
    for start in range(0, len(users), block):
        chunk = users[start : start + block]
        scores = np.array(scorer(chunk), dtype=np.float32, copy=True)
        lengths = indptr[chunk + 1] - indptr[chunk]
        rows = np.repeat(np.arange(len(chunk)), lengths)
        cols = np.concatenate([train_items[indptr[u] : indptr[u + 1]] for u in chunk])
        scores[rows, cols] = -np.inf
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        top_scores = np.take_along_axis(scores, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)
        keys = chunk[:, None] * num_items + top
        hits = _contains(test_keys, keys)
        relevant = n_test[chunk]
        recall[start : start + block] = hits.sum(1) / relevant
        hit[start : start + block] = hits.any(1)
        ndcg[start : start + block] = (hits * discount).sum(1) / ideal[
            np.minimum(relevant, k_eff) - 1
        ]
    return PerUserRanking(users=users, recall=recall, ndcg=ndcg, hit_rate=hit)


def format_metrics_table(rows: dict[str, RankingMetrics]) -> str:
    """A small fixed-width table, one line per named result.

    Example:
        >>> print(format_metrics_table({"pop": RankingMetrics(0.1, 0.05, 0.1, 10, 5)}))
        model        recall@10   ndcg@10  hit_rate@10  users
        pop             0.1000    0.0500       0.1000      5
    """
    k = next(iter(rows.values())).k if rows else 10
    lines = [f"{'model':<12}{f'recall@{k}':>10}{f'ndcg@{k}':>10}{f'hit_rate@{k}':>13}{'users':>7}"]
    for name, m in rows.items():
        lines.append(
            f"{name:<12}{m.recall:>10.4f}{m.ndcg:>10.4f}{m.hit_rate:>13.4f}{m.num_users:>7}"
        )
    return "\n".join(lines)


def metrics_to_json(rows: dict[str, RankingMetrics]) -> dict[str, dict[str, float | int]]:
    """The JSON-ready form written to ``contract.METRICS_FILE``."""
    return {name: {**m.to_dict(), **{"k": m.k}} for name, m in rows.items()}


def _rows_by_user(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """CSR layout of ``data``: items of user u are ``items[indptr[u]:indptr[u+1]]``."""
    order = np.argsort(data.users, kind="stable")
    indptr = np.zeros(data.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(data.users, minlength=data.num_users), out=indptr[1:])
    return indptr, data.items[order]


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    position = np.searchsorted(sorted_keys, keys)
    position = np.minimum(position, len(sorted_keys) - 1)
    return sorted_keys[position] == keys

