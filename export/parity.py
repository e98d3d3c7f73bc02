"""Parity of an exported graph with the trained Keras model.

References are computed from the trained model itself: the kmr similarity layer (with
its normalization option) on rows of the model's own tables, invalid ids masked to
``-inf`` as the serving contract says (`export.onnx.graphs`), then a stable top-k
(ties to the lower position). For valid ids the rerank reference is also checked
against ``model([user_ids, item_ids])`` directly. Retrieval scores the catalogue in
chunks with a running top-k, so a 10M-item table is never held whole: the tables may be
numpy arrays or `export.archive.ArchiveTable` views that read rows on demand.

Example:
    >>> import numpy as np
    >>> from kmr.models import build_recommender
    >>> model = build_recommender(4, 6, 2, k=2)
    >>> ref = rerank_reference(model, np.array([0, -1]), np.array([[1, 7], [1, 2]]), k=3)
    >>> ref["top_item_ids"].tolist()[1], ref["top_positions"].tolist()[0][1:]
    ([-1, -1, -1], [-1, -1])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from export.onnx.graphs import RecommenderWeights, as_weights
from kmr import contract
from kmr.models import recommender_parts

Model = keras.Model | RecommenderWeights  # a trained model or its extracted weights

SCORE_TOLERANCE = 1e-5
# 16 MB of a D=64 float32 table per chunk: the similarity layer makes ~3 more copies.
_CHUNK_ITEMS = 1 << 16


@dataclass(frozen=True)
class ParityReport:
    """How an exported graph's outputs compare with the reference.

    Attributes:
        cases: Number of input batches compared.
        rows: Total rows compared.
        max_abs_score_diff: Largest ``|score - reference|`` over finite reference scores.
        ids_equal: Whether every id (and position) output equals the reference exactly.
        tie_swaps: Slots whose ids differ from the reference (see `compare`: only an
            order flip between near-equal reference scores is not a failure).
        passed: Scores within tolerance, ``-inf`` slots identical, ids equal up to ties.
    """

    cases: int
    rows: int
    max_abs_score_diff: float
    ids_equal: bool
    tie_swaps: int
    passed: bool

    def summary(self) -> str:
        """One line for the CLI."""
        return (
            f"parity: {self.cases} cases / {self.rows} rows, max |score diff| "
            f"{self.max_abs_score_diff:.3g}, top-k ids equal: {'yes' if self.ids_equal else 'no'}"
            + (f" ({self.tie_swaps} near-tie swaps)" if self.tie_swaps else "")
            + (" -> OK" if self.passed else " -> FAILED")
        )


def _tables(model: Model) -> tuple[np.ndarray, np.ndarray]:
    weights = as_weights(model)
    return weights.users, weights.items


def _similarity(model: Model, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    layer = model.similarity if isinstance(model, RecommenderWeights) else (
        recommender_parts(model).similarity
    )
    return np.asarray(keras.ops.convert_to_numpy(layer([users, items])), np.float32)


def _valid(ids: np.ndarray, size: int) -> np.ndarray:
    return (ids >= 0) & (ids < size)


def _stable_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k positions and scores per row; ties to the lower position; -inf padded."""
    b, n = scores.shape
    positions = np.full((b, k), -1, np.int64)
    values = np.full((b, k), -np.inf, np.float32)
    for row in range(b):
        s = scores[row]
        take = min(k, n)
        if take == 0:
            continue
        if n > 4 * k:  # only sort the candidates that can make the top k
            kth = np.partition(s, n - take)[n - take]
            cand = np.flatnonzero(s >= kth)
        else:
            cand = np.arange(n)
        order = cand[np.lexsort((cand, -s[cand]))][:take]
        positions[row, :take] = order
        values[row, :take] = s[order]
    return positions, values


def rerank_reference(
    model: Model, user_ids: np.ndarray, item_ids: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """The rerank outputs the served graph must produce, from the trained model."""
    users, items = _tables(model)
    user_ids = np.asarray(user_ids, np.int64)
    item_ids = np.asarray(item_ids, np.int64)
    user_ok = _valid(user_ids, users.shape[0])
    item_ok = _valid(item_ids, items.shape[0]) & user_ok[:, None]
    u = users[np.where(user_ok, user_ids, 0)][:, None, :]
    v = items[np.where(item_ok, item_ids, 0)]
    scores = _similarity(model, u, v) if item_ids.shape[1] else np.zeros(item_ids.shape)
    scores = np.where(item_ok, scores, -np.inf).astype(np.float32)
    positions, values = _stable_top_k(scores, k)
    found = values > -np.inf
    positions = np.where(found, positions, contract.INVALID_ID)
    ids = np.take_along_axis(item_ids, np.maximum(positions, 0), axis=1) if item_ids.size else (
        np.full_like(positions, contract.INVALID_ID)
    )
    return {
        contract.TOP_ITEM_IDS: np.where(found, ids, contract.INVALID_ID),
        contract.TOP_POSITIONS: positions,
        contract.TOP_SCORES: values,
    }


def retrieve_reference(
    model: Model, user_ids: np.ndarray, exclude_item_ids: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """The retrieve outputs the served graph must produce, from the trained model.

    The item table is scored in chunks of `_CHUNK_ITEMS` rows and only a running top-k
    per user is kept (merged with each chunk's own top-k under the same total order:
    score descending, then item id ascending), so memory stays at one chunk even for a
    10M-item table read from the archive (`export.archive.ArchiveTable`).
    """
    users, items = _tables(model)
    user_ids = np.asarray(user_ids, np.int64)
    exclude = np.asarray(exclude_item_ids, np.int64)
    b, n = len(user_ids), items.shape[0]
    user_ok = _valid(user_ids, users.shape[0])
    u = np.asarray(users[np.where(user_ok, user_ids, 0)], np.float32)[:, None, :]
    drop = [exclude[row][_valid(exclude[row], n)] for row in range(b)]
    best_ids = np.empty((b, 0), np.int64)
    best_scores = np.empty((b, 0), np.float32)
    for start in range(0, n, _CHUNK_ITEMS):
        chunk = np.asarray(items[start : start + _CHUNK_ITEMS], np.float32)
        scores = np.array(_similarity(model, u, chunk[None]), np.float32)  # writable
        for row in range(b):
            local = drop[row][(drop[row] >= start) & (drop[row] < start + len(chunk))]
            scores[row, local - start] = -np.inf
        scores[~user_ok] = -np.inf
        positions, values = _stable_top_k(scores, k)
        ids = np.where(positions >= 0, positions + start, -1)
        best_ids, best_scores = _merge_top_k(
            np.concatenate([best_ids, ids], 1), np.concatenate([best_scores, values], 1), k
        )
        del chunk, scores  # before the next chunk is read
    found = best_scores > -np.inf
    return {
        contract.TOP_ITEM_IDS: np.where(found, best_ids, contract.INVALID_ID),
        contract.TOP_SCORES: np.where(found, best_scores, -np.inf).astype(np.float32),
    }


def _merge_top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best ``(score desc, id asc)`` entries; padding ids are -1."""
    out_ids = np.full((ids.shape[0], k), -1, np.int64)
    out_scores = np.full((ids.shape[0], k), -np.inf, np.float32)
    for row in range(ids.shape[0]):
        real = ids[row] >= 0
        order = np.lexsort((ids[row][real], -scores[row][real]))[:k]
        out_ids[row, : len(order)] = ids[row][real][order]
        out_scores[row, : len(order)] = scores[row][real][order]
    return out_ids, out_scores


def keras_rerank(model: keras.Model, user_ids: np.ndarray, item_ids: np.ndarray,
                 inputs: tuple[Any, Any] | None = None, k: int | None = None) -> tuple:
    """The model's own top-k as numpy ``(positions, scores)`` (valid ids only).

    ``inputs`` are the model's user and item `export.archive.InputSpec`s: the ids are fed
    by input name, with the model's dtype and user shape ([B] or [B, 1]). The answer is
    the model's `TopKRecommendationSelector` output, or, for a model without one, the
    top ``k`` of its similarity scores (stable: ties to the lower position). Extra
    outputs of the model are ignored.
    """
    parts = recommender_parts(model)
    target = parts.selector if parts.selector is not None else parts.similarity
    scorer = keras.Model(model.inputs, target.output)
    users, items = np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64)
    if inputs is None:
        feed: Any = [users, items]
    else:
        user, item = inputs
        if len(user.shape) == 2:
            users = users.reshape(-1, 1)
        feed = {user.name: users.astype(user.dtype), item.name: items.astype(item.dtype)}
    out = scorer(feed)
    if parts.selector is not None:
        positions, scores = out
        return np.asarray(positions).astype(np.int64), np.asarray(scores)
    scores = np.asarray(out)
    width = min(k or scores.shape[1], scores.shape[1])
    positions = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    return positions.astype(np.int64), np.take_along_axis(scores, positions, axis=1)


def compare(
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    *,
    tolerance: float = SCORE_TOLERANCE,
) -> tuple[float, bool, int, bool]:
    """Compares one batch: ``(max_abs_score_diff, ids_equal, tie_swaps, passed)``.

    A slot whose id (or position) differs from the reference is a *tie swap*, not a
    failure, only if the reference has a near-equal score there: the output's id sits
    elsewhere in the reference row with a score within tolerance of this slot's, or this
    slot's score is within tolerance of the row's last finite score (a near tie with an
    item just outside the reference's top k). Any other differing id fails, even when
    the scores agree (a graph that returns the right scores for the wrong ids).
    """
    got, want = outputs[contract.TOP_SCORES], reference[contract.TOP_SCORES]
    finite = np.isfinite(want)
    same_inf = np.array_equal(np.isneginf(got), np.isneginf(want))
    diff = np.abs(got[finite] - want[finite]) if finite.any() else np.zeros(1)
    limit = tolerance * np.maximum(1.0, np.abs(want[finite])) if finite.any() else 1.0
    scores_ok = same_inf and bool(np.all(diff <= limit))
    id_names = [n for n in reference if n != contract.TOP_SCORES]
    mismatch = np.zeros(got.shape, bool)
    for name in id_names:
        mismatch |= outputs[name] != reference[name]
    swaps_ok = all(
        _is_tie_swap(outputs, reference, id_names, row, slot, tolerance)
        for row, slot in zip(*np.nonzero(mismatch), strict=True)
    )
    tie_swaps = int(mismatch.sum())
    return float(diff.max()), tie_swaps == 0, tie_swaps, scores_ok and swaps_ok


def _is_tie_swap(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 id_names: list[str], row: int, slot: int, tolerance: float) -> bool:
    """Whether the differing ``[row, slot]`` is explained by a near-tie in the reference."""
    scores = reference[contract.TOP_SCORES][row]
    if not np.isfinite(scores[slot]):
        return False
    close = np.abs(scores - scores[slot]) <= tolerance * max(1.0, abs(float(scores[slot])))
    last = np.flatnonzero(np.isfinite(scores))[-1]
    if close[last]:
        return True  # may tie with an item just outside the reference's top k
    same = close.copy()
    for name in id_names:
        same &= reference[name][row] == outputs[name][row, slot]
    return bool(same.any())


def check_parity(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    cases: list[dict[str, np.ndarray]],
) -> ParityReport:
    """Runs every case through ``run`` and ``reference`` and summarises the comparison.

    Example:
        >>> import numpy as np
        >>> out = {"top_item_ids": np.array([[1]]), "top_scores": np.array([[0.5]], "f4")}
        >>> check_parity(lambda c: out, lambda c: out, [{}]).passed
        True
    """
    worst, ids_equal, swaps, passed, rows = 0.0, True, 0, True, 0
    for case in cases:
        out, ref = run(case), reference(case)
        diff, equal, swap, ok = compare(out, ref)
        worst, ids_equal, swaps = max(worst, diff), ids_equal and equal, swaps + swap
        passed = passed and ok
        rows += len(next(iter(case.values()), ()))
    # A swap is only a tie if scores still agree slot by slot (checked by `ok`).
    return ParityReport(len(cases), rows, worst, ids_equal, swaps, passed)


def parity_cases(kind: str, num_users: int, num_items: int, k: int, seed: int = 0) -> list:
    """A few batches of valid and invalid ids that exercise every documented rule."""
    rng = np.random.default_rng(seed)
    bad = np.array([-1, num_users, 2**62, -(2**62)], np.int64)
    good = np.unique(np.r_[0, num_users - 1, rng.integers(0, num_users, 4)])
    users = np.r_[good, bad].astype(np.int64)
    b = len(users)
    if kind == contract.GRAPH_RERANK:
        n = k + 3
        items = rng.integers(0, num_items, (b, n)).astype(np.int64)
        items[:, -4:] = [-1, num_items, 2**62, -(2**62)]
        few = rng.integers(0, num_items, (b, 1)).astype(np.int64)
        return [
            {contract.USER_ID: users, contract.ITEM_IDS: items},
            {contract.USER_ID: users, contract.ITEM_IDS: few},
        ]
    m = 6
    exclude = np.full((b, m), -1, np.int64)
    exclude[:, 0] = rng.integers(0, num_items, b)
    exclude[:, 1:4] = [num_items, 2**62, -(2**62)]
    return [
        {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude},
        {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude[:, :0]},
    ]


def served_runner(session: Any, kind: str,
                  id_maps: tuple[Any, Any] | None = None) -> Callable[[dict], dict]:
    """``run(case)`` for `check_parity`: the served graph on a dense case, answers as dense.

    With ``id_maps`` (``(users, items)`` vocabularies of a raw-id graph) the dense ids are
    fed as raw ids (invalid indices as unknown ids) and the raw answer is mapped back;
    the empty-slot score (`kmr.contract.EMPTY_SCORE`) reads as ``-inf``, like the
    references. ``num_results`` must agree with the filled slots (ValueError if not).
    """
    from export.onnx.raw_ids import RawIdCodec

    names = list(contract.OUTPUTS[kind])
    codec = RawIdCodec(*id_maps) if id_maps is not None else None
    list_name = contract.INPUTS[kind][1]

    def run(case: dict) -> dict:
        feed = dict(case)
        if codec is not None:
            feed[contract.USER_ID] = codec.encode_users(case[contract.USER_ID])
            feed[list_name] = codec.encode_items(case[list_name])
        out = dict(zip(names, session.run(names, feed), strict=True))
        if codec is not None:
            out[contract.TOP_ITEM_IDS] = codec.decode_items(out[contract.TOP_ITEM_IDS])
        scores = out[contract.TOP_SCORES]
        out[contract.TOP_SCORES] = np.where(scores == np.float32(contract.EMPTY_SCORE),
                                            np.float32(-np.inf), scores)
        counts = out.pop(contract.NUM_RESULTS)[:, 0]
        filled = (out[contract.TOP_ITEM_IDS] >= 0).sum(axis=1)
        if not np.array_equal(counts, filled):
            raise ValueError(f"the {kind} graph's num_results {counts.tolist()} disagree "
                             f"with its filled slots {filled.tolist()}")
        return out

    return run
