"""Closed-form tables for the dual-embedding graph: low-rank ridge regression of positives.

The ``"low_rank_ridge"`` objective needs no epochs. With ``X`` the binary
(users x items) matrix of training positives and ``X ~ U S V^T`` its rank-D truncated
SVD, the item-item weights ``W = V diag(s^2 / (s^2 + lam)) V^T`` minimise
``||X - X W||^2 + lam ||W||^2`` over rank-D matrices (a linear autoencoder with ridge
shrinkage), and a user's scores ``x_u W`` factor into the spec's graph:

- item table: ``V`` (``num_items x D``);
- user table: ``x_u V diag(f) = U diag(s f)`` with ``f = s^2 / (s^2 + lam)``.

``lam = shrinkage * positives / num_items`` (the shrinkage times the mean item
popularity), so one ``shrinkage`` means the same on data of any size: doubling every
user doubles both ``s^2`` and ``lam``. The dot product of the two tables is the score;
the similarity's 1/sqrt(D) leaves the ranking unchanged, while cosine normalisation
would not (it rescales each item), so this objective requires ``"sqrt_dim"``.

Example:
    >>> from kmr.data.synthetic import make_synthetic
    >>> data = make_synthetic(num_users=50, num_items=30, interactions_per_user=5)
    >>> tables = low_rank_ridge_tables(data, dim=8, shrinkage=10.0)
    >>> tables.users.shape == (data.num_users, 8), tables.users.dtype.name
    (True, 'float32')
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from kmr.data.interactions import Interactions

# Up to this many singular values (the smaller side of X), or where D is near that side
# (svds needs k < min(X.shape)), the smaller side's Gram matrix is decomposed exactly
# (~0.4 s at 1,024, ~10 s at 4,096 on 2 cores); above it, ARPACK's svds.
_EXACT_SIDE_MAX = 1024


def positives_matrix(train: Interactions) -> sp.csr_matrix:
    """The binary (num_users, num_items) CSR matrix of ``train``'s positives.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> data = make_synthetic(num_users=5, num_items=4, interactions_per_user=2)
        >>> x = positives_matrix(data)
        >>> x.shape, x.nnz == len(data), set(x.data.tolist())
        ((5, 4), True, {1.0})
    """
    return sp.csr_matrix(
        (np.ones(len(train), dtype=np.float64), (train.users, train.items)),
        shape=(train.num_users, train.num_items),
    )


class RidgeTables(NamedTuple):
    """The two tables, and the objective ``||X - XW||^2 + lam ||W||^2`` per positive."""

    users: np.ndarray
    items: np.ndarray
    loss: float


def low_rank_ridge_tables(train: Interactions, dim: int, shrinkage: float,
                          seed: int = 0) -> RidgeTables:
    """The user and item tables (float32, ``dim`` wide) of the rank-``dim`` ridge solution.

    Where X has fewer than ``dim`` singular values (tiny data), the extra columns are 0.

    Args:
        train: Training positives (their vocabularies size the tables).
        dim: Width D of both tables (the rank).
        shrinkage: Ridge strength in units of the mean item popularity (>= 0).
        seed: Seeds ARPACK's start vector (equal seeds give equal tables).
    """
    if shrinkage < 0 or not np.isfinite(shrinkage):
        raise ValueError(f"Invalid value received for argument `shrinkage`. Expected a "
                         f"finite float >= 0. Received: shrinkage={shrinkage!r}")
    x = positives_matrix(train)
    left, values, right = _truncated_svd(x, dim, seed)
    lam = shrinkage * x.nnz / max(x.shape[1], 1)
    squared = values**2
    kept = np.divide(squared, squared + lam, out=np.zeros_like(squared), where=squared > 0)
    users = np.zeros((x.shape[0], dim), dtype=np.float32)
    items = np.zeros((x.shape[1], dim), dtype=np.float32)
    users[:, : len(values)] = left * (values * kept)
    items[:, : len(values)] = right
    # ||X||^2 = nnz (binary); the dropped directions stay whole in the residual.
    residual = x.nnz - squared.sum() + (squared * (1.0 - kept) ** 2).sum()
    loss = (residual + lam * (kept**2).sum()) / max(x.nnz, 1)
    return RidgeTables(users, items, float(loss))


def _truncated_svd(x: sp.csr_matrix, dim: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U, s, V)`` of the top ``min(dim, rank)`` singular triplets, ``s`` descending."""
    side = min(x.shape)
    if side == 0 or x.nnz == 0:
        return np.zeros((x.shape[0], 0)), np.zeros(0), np.zeros((x.shape[1], 0))
    if side <= max(_EXACT_SIDE_MAX, 2 * dim + 1):
        return _svd_from_gram(x, dim)
    left, values, right_t = svds(x, k=min(dim, side - 1), random_state=seed)
    order = np.argsort(values)[::-1]
    return left[:, order], values[order], right_t[order].T


def _svd_from_gram(x: sp.csr_matrix, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top triplets from the eigenvectors of the smaller side's Gram matrix."""
    transpose = x.shape[0] > x.shape[1]
    a = x.T.tocsr() if transpose else x
    eigenvalues, vectors = np.linalg.eigh((a @ a.T).toarray())
    order = np.argsort(eigenvalues)[::-1][:dim]
    squared = np.clip(eigenvalues[order], 0.0, None)
    keep = squared > squared.max(initial=0.0) * 1e-12
    values = np.sqrt(squared[keep])
    small = vectors[:, order][:, keep]
    large = np.asarray(a.T @ small) / values
    return (large, values, small) if transpose else (small, values, large)
