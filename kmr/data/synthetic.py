"""A built-in interactions generator with planted low-rank structure and popularity skew.

Each user draws items from a softmax over ``taste + popularity``: the taste part is
the dot product of rank-``rank`` user and item factors (what matrix factorisation can
learn), the popularity part a Zipf-like item bias (what the popularity baseline
learns). With the defaults both matter, so popularity is a real baseline a trained
model should clearly beat.

Example:
    >>> data = make_synthetic(num_users=50, num_items=40, interactions_per_user=5, seed=1)
    >>> len(data), data.num_users, data.num_items <= 40
    (250, 50, True)
"""

from __future__ import annotations

import numpy as np

from kmr.data.interactions import Interactions
from kmr.vocabulary import Vocabulary


def make_synthetic(
    num_users: int = 2000,
    num_items: int = 1000,
    rank: int = 8,
    interactions_per_user: int = 20,
    *,
    taste_strength: float = 3.0,
    popularity_exponent: float = 1.0,
    seed: int = 0,
) -> Interactions:
    """Generates positives with a planted taste structure (deterministic in ``seed``).

    Args:
        num_users: Users, each with exactly ``interactions_per_user`` distinct items.
        num_items: Catalogue size (items nobody drew are left out of the vocabulary).
        rank: Rank of the planted taste structure.
        interactions_per_user: Positives per user (>= 2, < num_items).
        taste_strength: Scale of the taste logits; larger makes tastes sharper.
        popularity_exponent: Zipf exponent of the item bias; 0 removes popularity.
        seed: Seed of the generator; equal seeds give equal data.

    Returns:
        Interactions with int raw ids (``0..num_users-1``, ``0..num_items-1``) and
        timestamps giving each user's interactions a random order (so a
        leave-last-out holdout picks a random item, not a popular one).

    Example:
        >>> a = make_synthetic(num_users=20, num_items=30, interactions_per_user=4, seed=3)
        >>> b = make_synthetic(num_users=20, num_items=30, interactions_per_user=4, seed=3)
        >>> bool((a.items == b.items).all())
        True
    """
    if num_users < 1 or num_items < 2 or rank < 1:
        raise ValueError(
            "Expected num_users >= 1, num_items >= 2, rank >= 1. "
            f"Received: num_users={num_users}, num_items={num_items}, rank={rank}"
        )
    if not 2 <= interactions_per_user < num_items:
        raise ValueError(
            "Expected 2 <= interactions_per_user < num_items. "
            f"Received: interactions_per_user={interactions_per_user}, num_items={num_items}"
        )
    rng = np.random.default_rng(seed)
    user_factors = rng.standard_normal((num_users, rank))
    item_factors = rng.standard_normal((num_items, rank))
    popularity_rank = rng.permutation(num_items) + 1
    item_bias = -popularity_exponent * np.log(popularity_rank)

    users, items = [], []
    for start in range(0, num_users, 1024):  # chunks bound memory for big catalogues
        factors = user_factors[start : start + 1024]
        logits = taste_strength * factors @ item_factors.T / np.sqrt(rank) + item_bias
        # Gumbel top-k: a sample without replacement from softmax(logits).
        gumbel = rng.gumbel(size=logits.shape)
        chosen = np.argpartition(-(logits + gumbel), interactions_per_user - 1, axis=1)
        chosen = chosen[:, :interactions_per_user]
        users.append(np.repeat(np.arange(start, start + len(factors)), interactions_per_user))
        items.append(chosen.reshape(-1))
    user_index = np.concatenate(users)
    item_raw = np.concatenate(items)
    timestamps = np.concatenate(
        [rng.permutation(interactions_per_user) for _ in range(num_users)]
    ).astype(np.float64)

    used_items, item_index = np.unique(item_raw, return_inverse=True)
    return Interactions(
        users=user_index,
        items=item_index,
        timestamps=timestamps,
        user_vocab=Vocabulary(list(range(num_users)), name="user"),
        item_vocab=Vocabulary(used_items.tolist(), name="item"),
        source=(
            f"synthetic(num_users={num_users}, num_items={num_items}, rank={rank}, "
            f"interactions_per_user={interactions_per_user}, seed={seed})"
        ),
    )
