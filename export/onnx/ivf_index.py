"""The inverted-file (IVF) index behind the approximate retrieve graph, and its numpy reference.

Items are clustered by k-means (faiss, at export time only) on their *scoring-space*
vectors (L2-normalised for ``cosine``, as stored for ``sqrt_dim``). A cluster larger
than ``block_size`` (``max_fill`` x the mean cluster size) is split along its principal
direction into equal parts, each its own list with its own centroid (the mean of its
members, normalised for cosine), so every list fits one padded block: ``blocks``
``[num_lists, block_size, D]`` with ids ``[num_lists, block_size]`` (pad id -1, pad
vector 0). Inside a list items are in ascending id order.

Scores are exactly the trained similarity: the user row times ``1/sqrt(D)``
(``sqrt_dim``) or L2-normalised (``cosine``), dot the stored item vector, the same
float32 arithmetic as the exact retrieve graph (`export.onnx.graphs`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(200, 8)).astype(np.float32)
    >>> index = build_index(items, nlist=8, normalization="sqrt_dim")
    >>> index.block_size <= 38, int((index.block_ids >= 0).sum())  # 38 = 1.5 * 200 / 8
    (True, 200)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NORMALIZATIONS = ("sqrt_dim", "cosine")
DEFAULT_TARGET_RECALL = 0.95
_EPS = np.float32(1e-12)  # the similarity layer's (and the exact graph's) norm floor
_MAX_NLIST = 65_536


@dataclass(frozen=True)
class IvfIndex:
    """A padded-block IVF index of an item table.

    Attributes:
        centroids: ``[num_lists, D]`` float32, in scoring space.
        blocks: ``[num_lists, block_size, D]`` float32 item vectors (zero padding).
        block_ids: ``[num_lists, block_size]`` int64 dense item ids (-1 padding).
        item_loc: ``[num_items]`` int64: ``list * block_size + slot`` of each item.
        normalization: ``"sqrt_dim"`` or ``"cosine"``.
        nlist: The k-means cluster count asked for (``num_lists >= nlist`` after splits).
    """

    centroids: np.ndarray
    blocks: np.ndarray
    block_ids: np.ndarray
    item_loc: np.ndarray
    normalization: str
    nlist: int

    @property
    def num_lists(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[1])

    @property
    def num_items(self) -> int:
        return int(self.item_loc.shape[0])


@dataclass(frozen=True)
class IndexSettings:
    """How to build a retrieval index (every field has a size-based or measured default).

    Attributes:
        nlist: k-means clusters; default `export.onnx.ivf_index.default_nlist` (about
            4 sqrt(N)). At most the item count.
        nprobe: The graph's default lists per row; default the smallest value whose
            recall@k against exact reaches ``target_recall`` on 256 sampled users.
        target_recall: What the default nprobe must reach (0 < r <= 1).
        rescore: int8 index: the default re-score depth (candidates = k * rescore);
            default twice the smallest depth exact on 256 sampled users.
        seed: k-means and sampling seed (the same seed gives the same index).
    """

    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    rescore: int | None = None
    seed: int = 0

    def problems(self, num_items: int | None = None) -> list[str]:
        """What is wrong with these settings (empty when valid).

        Example:
            >>> IndexSettings(nlist=0, target_recall=1.5).problems()
            ['nlist=0: expected a positive int', 'target_recall=1.5: expected 0 < r <= 1']
        """
        out = []
        for name in ("nlist", "nprobe", "rescore"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                out.append(f"{name}={value!r}: expected a positive int")
        if not isinstance(self.target_recall, (int, float)) or not 0 < self.target_recall <= 1:
            out.append(f"target_recall={self.target_recall!r}: expected 0 < r <= 1")
        if (num_items is not None and isinstance(self.nlist, int)
                and self.nlist > num_items):
            out.append(f"nlist={self.nlist}: the model has only {num_items} items")
        return out


def default_nlist(num_items: int) -> int:
    """``round(4 * sqrt(num_items))``, bounded to ``[1, min(65536, num_items // 8)]``.

    Example:
        >>> default_nlist(1_000_000), default_nlist(10_000_000), default_nlist(5)
        (4000, 12649, 1)
    """
    upper = max(1, min(_MAX_NLIST, num_items // 8))
    return int(min(upper, max(1, round(4 * math.sqrt(num_items)))))


def scoring_items(items: np.ndarray, normalization: str) -> np.ndarray:
    """Item vectors as the graph stores them: L2-normalised (cosine) or as given."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"Invalid value received for argument `normalization`. Expected one "
                         f"of {NORMALIZATIONS}. Received: normalization={normalization!r}")
    if normalization == "cosine":
        norms = np.sqrt(np.sum(np.square(items), axis=1, keepdims=True))
        items = items / np.maximum(norms, _EPS)
    return items


def scoring_users(user_rows: np.ndarray, normalization: str) -> np.ndarray:
    """User rows in scoring space: times ``1/sqrt(D)`` (sqrt_dim) or L2-normalised (cosine).

    Example:
        >>> scoring_users(np.array([[3.0, 4.0]], np.float32), "cosine").tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    rows = np.asarray(user_rows, np.float32)
    if normalization == "cosine":
        return scoring_items(rows, "cosine")
    return rows * np.float32(1.0 / math.sqrt(rows.shape[1]))


def _kmeans_assign(x: np.ndarray, nlist: int, seed: int, cosine: bool) -> np.ndarray:
    import faiss  # export-time only

    if nlist == 1:
        return np.zeros(x.shape[0], np.int64)
    km = faiss.Kmeans(x.shape[1], nlist, niter=10, seed=seed, spherical=cosine,
                      max_points_per_centroid=256, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def _split(members: np.ndarray, x: np.ndarray, cap: int) -> list[np.ndarray]:
    """Members (ascending ids) cut into equal parts of <= cap along the principal direction."""
    if members.size <= cap:
        return [members]
    rows = x[members] - x[members].mean(axis=0)
    _, vectors = np.linalg.eigh(rows.T.astype(np.float64) @ rows)
    order = np.argsort(rows @ vectors[:, -1], kind="stable")
    parts = np.array_split(members[order], -(-members.size // cap))
    return [np.sort(p) for p in parts]


def _lists(assign: np.ndarray, x: np.ndarray, nlist: int, cap: int) -> list[np.ndarray]:
    order = np.argsort(assign, kind="stable")  # ascending ids inside each cluster
    bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
    lists = []
    for c in range(nlist):
        members = order[bounds[c] : bounds[c + 1]]
        if members.size:
            lists.extend(_split(members, x, cap))
    return lists


def build_index(items: np.ndarray, *, nlist: int, normalization: str, seed: int = 0,
                max_fill: float = 1.5) -> IvfIndex:
    """Clusters ``items`` (faiss k-means) into an `IvfIndex` (see the module docstring).

    Args:
        items: Item table ``[N, D]`` as trained (normalised here for cosine).
        nlist: k-means clusters, ``1 <= nlist <= N``.
        normalization: The similarity's normalization.
        seed: k-means seed.
        max_fill: Block size is ``ceil(max_fill * N / nlist)``; larger clusters are split.
    """
    x = scoring_items(items, normalization)
    n, d = x.shape
    if not 1 <= nlist <= n:
        raise ValueError(f"Invalid value received for argument `nlist`. Expected 1 <= nlist "
                         f"<= num_items ({n}). Received: nlist={nlist}")
    cap = max(1, math.ceil(max_fill * n / nlist))
    lists = _lists(_kmeans_assign(x, nlist, seed, normalization == "cosine"), x, nlist, cap)
    size = max(p.size for p in lists)
    list_of = np.repeat(np.arange(len(lists)), [p.size for p in lists])
    slot_of = np.concatenate([np.arange(p.size) for p in lists])
    members = np.concatenate(lists)
    blocks = np.zeros((len(lists), size, d), np.float32)
    blocks[list_of, slot_of] = x[members]
    block_ids = np.full((len(lists), size), -1, np.int64)
    block_ids[list_of, slot_of] = members
    item_loc = np.empty(n, np.int64)
    item_loc[members] = list_of * size + slot_of
    sums = np.zeros((len(lists), d), np.float64)
    np.add.at(sums, list_of, x[members])
    centroids = (sums / np.bincount(list_of)[:, None]).astype(np.float32)
    if normalization == "cosine":
        centroids = scoring_items(centroids, "cosine")
    return IvfIndex(centroids, blocks, block_ids, item_loc, normalization, nlist)


def _rows_in_range(user_id: np.ndarray, num_users: int) -> np.ndarray:
    user_id = np.asarray(user_id, np.int64)
    return (user_id >= 0) & (user_id < num_users)


def _valid_exclusions(row: np.ndarray, num_items: int) -> np.ndarray:
    row = np.asarray(row, np.int64)
    return row[(row >= 0) & (row < num_items)]


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one row (ties to the lower position), padded with (-1, -inf)."""
    scores = np.concatenate([scores, np.full(k, -np.inf, np.float32)])
    ids = np.concatenate([ids, np.full(k, -1, np.int64)])
    order = np.argsort(-scores, kind="stable")[:k]
    found = scores[order] > -np.inf
    return np.where(found, ids[order], -1), np.where(found, scores[order], -np.inf)


def ivf_reference(index: IvfIndex, user_table: np.ndarray, user_id: np.ndarray,
                  exclude_item_ids: np.ndarray, *, k: int, nprobe: int | np.ndarray,
                  default_nprobe: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The IVF graph's answer in numpy: same index, same probing, same tie rules.

    ``nprobe`` is one value or one per row; ``<= 0`` means ``default_nprobe``, and every
    value is clamped to ``[1, num_lists]``. Lists are probed in descending centroid
    score (ties to the lower list), ties between items go to the earlier probed position.

    Returns:
        ``(top_item_ids int64 [B, k], top_scores float32 [B, k])`` with -1 / -inf padding.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> items = rng.normal(size=(50, 4)).astype(np.float32)
        >>> users = rng.normal(size=(3, 4)).astype(np.float32)
        >>> index = build_index(items, nlist=5, normalization="cosine")
        >>> ids, _ = ivf_reference(index, users, np.array([0, 7]), np.full((2, 1), -1),
        ...                        k=2, nprobe=5)
        >>> ids[1].tolist(), bool((ids[0] == exact_topk(users, items, np.array([0]), k=2,
        ...                       normalization="cosine")[0][0]).all())
        ([-1, -1], True)
    """
    user_id = np.asarray(user_id, np.int64)
    exclude = np.broadcast_to(np.asarray(exclude_item_ids, np.int64),
                              (user_id.shape[0], np.shape(exclude_item_ids)[1]))
    asked = np.broadcast_to(np.asarray(nprobe, np.int64), user_id.shape)
    rows_p = np.clip(np.where(asked <= 0, default_nprobe, asked), 1, index.num_lists)
    out_ids = np.full((user_id.shape[0], k), -1, np.int64)
    out_scores = np.full((user_id.shape[0], k), -np.inf, np.float32)
    ok = _rows_in_range(user_id, user_table.shape[0])
    for b in np.flatnonzero(ok):
        u = scoring_users(user_table[user_id[b]][None], index.normalization)[0]
        probe = np.argsort(-(index.centroids @ u), kind="stable")[:rows_p[b]]
        ids = index.block_ids[probe].ravel()
        scores = index.blocks[probe].reshape(-1, u.shape[0]) @ u
        dropped = (ids < 0) | np.isin(ids, _valid_exclusions(exclude[b], index.num_items))
        out_ids[b], out_scores[b] = _top(np.where(dropped, -np.inf, scores), ids, k)
    return out_ids, out_scores


def exact_topk(user_table: np.ndarray, item_table: np.ndarray, user_id: np.ndarray, *, k: int,
               normalization: str, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the whole item table (no exclusions), chunked numpy.

    Returns ``(ids [B, k], scores [B, k])``; an out-of-range user gets -1 / -inf.

    Example:
        >>> items = np.eye(3, dtype=np.float32)
        >>> exact_topk(np.array([[0.0, 2.0, 1.0]], np.float32), items, np.array([0, 5]),
        ...            k=2, normalization="sqrt_dim")[0].tolist()
        [[1, 2], [-1, -1]]
    """
    user_id = np.asarray(user_id, np.int64)
    ok = _rows_in_range(user_id, user_table.shape[0])
    u = scoring_users(user_table[np.where(ok, user_id, 0)], normalization)
    best_s = np.full((u.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((u.shape[0], 0), np.int64)
    for start in range(0, item_table.shape[0], chunk):
        x = scoring_items(item_table[start : start + chunk], normalization)
        s = u @ x.T
        if s.shape[1] > 2 * k:  # only the 2k best of a chunk can matter (ties beyond: rare)
            part = np.argpartition(-s, 2 * k - 1, axis=1)[:, : 2 * k]
            s, ids = np.take_along_axis(s, part, axis=1), part + start
        else:
            ids = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1)
        by_id = np.argsort(i, axis=1, kind="stable")  # then by score: ties to the lower id
        s, i = np.take_along_axis(s, by_id, 1), np.take_along_axis(i, by_id, 1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    best_i = np.where(ok[:, None], best_i, -1)
    return best_i, np.where(ok[:, None], best_s, -np.inf).astype(np.float32)


def recall_at_k(found_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of ``|found & exact| / |exact|`` (-1 slots ignored; empty rows skipped).

    Example:
        >>> recall_at_k(np.array([[1, 2, -1], [4, 5, 6]]), np.array([[2, 3, 1], [-1, -1, -1]]))
        0.6666666666666666
    """
    values = []
    for found, exact in zip(np.asarray(found_ids), np.asarray(exact_ids), strict=True):
        truth = set(exact[exact >= 0].tolist())
        if truth:
            values.append(len(truth & set(found[found >= 0].tolist())) / len(truth))
    return float(np.mean(values)) if values else 1.0


def list_ranks(index: IvfIndex, user_rows: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """For each ``item_ids[b, j]``: the probe rank (0 = first) of its list for user row b.

    Item j of row b is scored by the graph iff its rank is < nprobe.
    """
    u = scoring_users(user_rows, index.normalization)
    order = np.argsort(-(u @ index.centroids.T), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    lists = index.item_loc[np.maximum(item_ids, 0)] // index.block_size
    return np.where(item_ids >= 0, np.take_along_axis(rank, lists, 1), -1)


def choose_nprobe(index: IvfIndex, user_table: np.ndarray, item_table: np.ndarray, *, k: int,
                  target_recall: float = 0.95, sample: int = 256, seed: int = 0) -> int:
    """Smallest nprobe whose recall@k against exact is >= ``target_recall`` on a sample.

    The sample is ``sample`` users drawn without replacement (seeded). Recall at every
    nprobe comes from one exact top-k and the probe ranks of the exact items' lists.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> items = rng.normal(size=(300, 4)).astype(np.float32)
        >>> index = build_index(items, nlist=10, normalization="sqrt_dim")
        >>> users = rng.normal(size=(40, 4)).astype(np.float32)
        >>> 1 <= choose_nprobe(index, users, items, k=5) <= index.num_lists
        True
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(user_table.shape[0], min(sample, user_table.shape[0]), replace=False)
    exact, _ = exact_topk(user_table, item_table, users, k=k, normalization=index.normalization)
    ranks = np.sort(list_ranks(index, user_table[users], exact)[exact >= 0])
    if ranks.size == 0:
        return 1
    need = max(1, math.ceil(target_recall * ranks.size))
    return int(min(index.num_lists, ranks[need - 1] + 1))
