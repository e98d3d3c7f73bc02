"""Classical baselines for the ranking benchmarks: EASE, implicit ALS and BPR, popularity.

Each ``fit_*`` takes the training `Interactions` and returns a `Scorer` (dense user
indices -> scores over the whole catalogue), so every model goes through the same
`kmr.training.evaluation` code (same split, same exclusion of training items).

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> from kmr.training.evaluation import evaluate_ranking, holdout_split
    >>> split = holdout_split(make_synthetic(num_users=80, num_items=40,
    ...                                      interactions_per_user=6))
    >>> scorer = fit_ease(split.train, l2=50.0)
    >>> evaluate_ranking(scorer, split).num_users
    80
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from kmr.data.interactions import Interactions
from kmr.training.evaluation import Scorer

ALS_ITERATIONS = 15
BPR_ITERATIONS = 100


def user_items(train: Interactions) -> sp.csr_matrix:
    """The binary (num_users, num_items) CSR matrix of the training positives."""
    ones = np.ones(len(train), dtype=np.float32)
    shape = (train.num_users, train.num_items)
    return sp.csr_matrix((ones, (train.users, train.items)), shape=shape)


def fit_ease(train: Interactions, l2: float) -> Scorer:
    """EASE (Steck, 2019): closed-form item-item weights with a zero diagonal.

    ``P = (X^T X + l2 I)^-1``, ``B = -P / diag(P)`` off the diagonal, ``B_ii = 0``;
    a user's scores are ``x_u B``.
    """
    x = user_items(train)
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = (p / (-np.diag(p))).astype(np.float32)
    np.fill_diagonal(b, 0.0)
    dense = x.toarray()
    return lambda users: dense[users] @ b


def fit_als(train: Interactions, *, factors: int, regularization: float, alpha: float,
            seed: int = 0) -> Scorer:
    """implicit's conjugate-gradient ALS (Hu, Koren & Volinsky), confidence ``1 + alpha``."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha,
        iterations=ALS_ITERATIONS, random_state=seed, calculate_training_loss=False,
    )
    model.fit(user_items(train), show_progress=False)
    return _factor_scorer(model)


def fit_bpr(train: Interactions, *, factors: int, learning_rate: float,
            regularization: float, seed: int = 0) -> Scorer:
    """implicit's BPR-MF (Rendle et al.), ``BPR_ITERATIONS`` epochs of SGD."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(
        factors=factors, learning_rate=learning_rate, regularization=regularization,
        iterations=BPR_ITERATIONS, random_state=seed,
    )
    model.fit(user_items(train), show_progress=False)
    return _factor_scorer(model)


def _factor_scorer(model: object) -> Scorer:
    users = np.asarray(model.user_factors)
    items = np.asarray(model.item_factors)
    return lambda u: users[u] @ items.T
