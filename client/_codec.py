"""Validation, encoding and decoding shared by the sync and async clients.

A ``plan_*`` function checks a request against the model facts, maps raw ids to dense
indices and splits the batch into wire-ready chunks; `Plan.finish` turns the chunk
outputs back into one `Recommendations`. No I/O happens here, so one piece of code
serves both clients and every protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.errors import InvalidRequestError, ModelContractError, UnknownRawIdError
from client.model_info import ModelInfo
from client.vocabularies import Vocabularies
from kmr import contract
from kmr.vocabulary import UnknownIdError, Vocabulary


@dataclass(frozen=True)
class Recommendations:
    """Top-k results, one row per requested user, best first.

    Attributes:
        user_ids: The user ids as requested (raw or dense), shape [B].
        item_ids: Shape [B, k]. Raw item ids (dtype object, None in empty slots) when
            the request used raw ids; otherwise dense indices (int64, -1 in empty slots).
        scores: float32 [B, k]; -inf in empty slots.
        item_indices: Dense item indices, int64 [B, k]; -1 in empty slots.
        positions: Rerank only: int64 [B, k] position of each item in that user's
            candidate list, -1 in empty slots. None for retrieve models.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    item_indices: np.ndarray
    positions: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """Boolean [B, k]: True where a slot holds an item."""
        return self.item_indices != contract.INVALID_ID

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class Plan:
    """Wire-ready chunks of one request and what is needed to decode the answers."""

    chunks: list[dict[str, np.ndarray]]
    outputs: tuple[str, ...]
    k: int
    user_ids: np.ndarray
    item_vocabulary: Vocabulary | None

    def finish(self, answers: Sequence[Mapping[str, np.ndarray]]) -> Recommendations:
        """Slices every chunk's outputs to k, reassembles them in order and maps ids."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        for chunk, answer in zip(self.chunks, answers, strict=True):
            rows = len(chunk[contract.USER_ID])
            for name in self.outputs:
                parts[name].append(_output(answer, name, rows, self.k))
        merged = {name: np.concatenate(arrays) for name, arrays in parts.items()}
        indices = merged[contract.TOP_ITEM_IDS].astype(np.int64, copy=False)
        return Recommendations(
            user_ids=self.user_ids,
            item_ids=_to_raw(self.item_vocabulary, indices),
            scores=merged[contract.TOP_SCORES].astype(np.float32, copy=False),
            item_indices=indices,
            positions=merged.get(contract.TOP_POSITIONS),
        )


def plan_recommend(
    info: ModelInfo,
    vocabularies: Vocabularies | None,
    user_ids: Any,
    *,
    k: int | None,
    exclude: Any,
    raw_ids: bool,
) -> Plan:
    """Validates and encodes a retrieve request (see `RecommenderClient.recommend`)."""
    _check_kind(info, contract.GRAPH_RETRIEVE, "recommend", "rerank")
    k = _check_k(k, info)
    users, user_indices = _users(info, vocabularies, user_ids, raw_ids)
    rows = _exclusions(info, vocabularies, exclude, len(user_indices), raw_ids)
    chunks = []
    for start, stop in _chunk_bounds(len(user_indices), info.max_batch_size):
        part = rows[start:stop]
        width = max([1, *(len(r) for r in part)])
        padded = np.full((stop - start, width), contract.INVALID_ID, dtype=np.int64)
        for i, row in enumerate(part):
            padded[i, : len(row)] = row
        chunks.append(
            {
                contract.USER_ID: _user_wire(info, user_indices[start:stop]),
                contract.EXCLUDE_ITEM_IDS: padded,
            }
        )
    return Plan(chunks, contract.OUTPUTS[contract.GRAPH_RETRIEVE], k, users,
                _item_vocab(vocabularies, raw_ids))


def plan_rerank(
    info: ModelInfo,
    vocabularies: Vocabularies | None,
    user_ids: Any,
    candidate_item_ids: Any,
    *,
    k: int | None,
    raw_ids: bool,
) -> Plan:
    """Validates and encodes a rerank request (see `RecommenderClient.rerank`)."""
    _check_kind(info, contract.GRAPH_RERANK, "rerank", "recommend")
    k = _check_k(k, info)
    users, user_indices = _users(info, vocabularies, user_ids, raw_ids)
    candidates = _id_array(candidate_item_ids, "candidate_item_ids", 2, raw_ids)
    if len(candidates) != len(user_indices):
        raise InvalidRequestError(
            "`candidate_item_ids` needs one candidate list per user. Expected "
            f"{len(user_indices)} lists. Received: {len(candidates)}"
        )
    n = candidates.shape[1]
    if n == 0:
        raise InvalidRequestError(
            "`candidate_item_ids` has zero candidates per user. Expected at least 1."
        )
    if n > info.max_candidates:
        raise InvalidRequestError(
            f"Too many candidates: model {info.name!r} accepts at most "
            f"max_candidates={info.max_candidates} per user. Received: {n}"
        )
    items = _indices(
        candidates, "candidate_item_ids", info.num_items, vocabularies, "items", raw_ids
    )
    chunks = [
        {
            contract.USER_ID: _user_wire(info, user_indices[start:stop]),
            contract.ITEM_IDS: items[start:stop],
        }
        for start, stop in _chunk_bounds(len(user_indices), info.max_batch_size)
    ]
    return Plan(chunks, contract.OUTPUTS[contract.GRAPH_RERANK], k, users,
                _item_vocab(vocabularies, raw_ids))


def _check_kind(info: ModelInfo, kind: str, method: str, other: str) -> None:
    if info.graph_kind != kind:
        raise InvalidRequestError(
            f"Model {info.name!r} is a {info.graph_kind!r} model; `{method}()` needs a "
            f"{kind!r} model. Call `{other}()` instead."
        )


def _check_k(k: Any, info: ModelInfo) -> int:
    if k is None:
        return info.k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= info.k:
        raise InvalidRequestError(
            f"Invalid value received for argument `k`. Expected an int in [1, {info.k}] "
            f"(model {info.name!r} was exported with k={info.k}). Received: k={k!r}"
        )
    return int(k)


def _users(
    info: ModelInfo, vocabularies: Vocabularies | None, user_ids: Any, raw_ids: bool
) -> tuple[np.ndarray, np.ndarray]:
    users = _id_array(user_ids, "user_ids", 1, raw_ids)
    return users, _indices(users, "user_ids", info.num_users, vocabularies, "users", raw_ids)


def _id_array(values: Any, name: str, ndim: int, raw_ids: bool) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError as error:  # numpy refuses ragged nested lists
        raise InvalidRequestError(
            f"`{name}` is ragged: every row must have the same length. ({error})"
        ) from error
    if ndim == 2 and array.dtype == object and array.ndim == 1 and any(
        isinstance(row, (list, tuple, np.ndarray)) for row in array
    ):
        raise InvalidRequestError(f"`{name}` is ragged: every row must have the same length.")
    if array.ndim != ndim:
        expected = "a 1-D sequence [B]" if ndim == 1 else "a 2-D sequence [B, N]"
        raise InvalidRequestError(
            f"`{name}` has the wrong rank. Expected {expected}. "
            f"Received: shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise InvalidRequestError(f"`{name}` is empty. Expected at least one id.")
    if array.size == 0:  # numpy gives [] float64; emptiness is checked by the caller
        return array.astype(np.int64)
    if array.dtype.kind in "bfc" or (not raw_ids and array.dtype.kind not in "iu"):
        flat = array.ravel().tolist()
        bad = next((v for v in flat if not _is_id(v, raw_ids)), flat[0])
        what = "raw ids (int or str)" if raw_ids else "integer dense indices"
        raise InvalidRequestError(
            f"`{name}` must hold {what}. Received: {bad!r} (dtype {array.dtype})"
        )
    return array


def _is_id(value: Any, raw_ids: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, str) if raw_ids else int)


def _indices(
    array: np.ndarray,
    name: str,
    size: int,
    vocabularies: Vocabularies | None,
    which: str,
    raw_ids: bool,
) -> np.ndarray:
    if raw_ids:
        vocab = _vocab(vocabularies, which)
        try:
            return vocab.to_indices(array.ravel().tolist()).reshape(array.shape)
        except UnknownIdError as error:
            raise UnknownRawIdError(f"`{name}`: {error}") from error
    _check_range(array, name, size)
    return array.astype(np.int64, copy=False)


def _check_range(array: np.ndarray, name: str, size: int, allow_padding: bool = False) -> None:
    bad_mask = (array < 0) | (array >= size)
    if allow_padding:
        bad_mask &= array != contract.INVALID_ID
    if bad_mask.any():
        where = tuple(int(i) for i in np.argwhere(bad_mask)[0])
        at = where[0] if len(where) == 1 else list(where)
        raise InvalidRequestError(
            f"`{name}` index out of range at {at}: expected dense indices in [0, {size}). "
            f"Received: {int(array[where])}"
        )


def _exclusions(
    info: ModelInfo,
    vocabularies: Vocabularies | None,
    exclude: Any,
    batch: int,
    raw_ids: bool,
) -> list[np.ndarray]:
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * batch
    if isinstance(exclude, np.ndarray) and exclude.ndim != 2:
        raise InvalidRequestError(
            "`exclude` has the wrong rank. Expected one list of item ids per user "
            f"(2-D). Received: shape {exclude.shape}"
        )
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, (Sequence, np.ndarray)):
        raise InvalidRequestError(
            "`exclude` must be one list of item ids per user. "
            f"Received: {type(exclude).__name__}"
        )
    if len(exclude) != batch:
        raise InvalidRequestError(
            f"`exclude` needs one list per user. Expected {batch} lists. "
            f"Received: {len(exclude)}"
        )
    rows = []
    for i, row in enumerate(exclude):
        array = np.asarray(row)
        if array.ndim != 1:
            raise InvalidRequestError(
                f"`exclude[{i}]` must be a flat list of item ids. Received: shape {array.shape}"
            )
        if array.size == 0:
            rows.append(np.empty(0, dtype=np.int64))
            continue
        array = _id_array(array, f"exclude[{i}]", 1, raw_ids)
        if raw_ids:
            indices = _indices(array, f"exclude[{i}]", info.num_items, vocabularies, "items",
                               True)
        else:
            _check_range(array, f"exclude[{i}]", info.num_items, allow_padding=True)
            indices = array[array != contract.INVALID_ID].astype(np.int64)
        if len(indices) > info.max_exclude:
            raise InvalidRequestError(
                f"`exclude[{i}]` is too long: model {info.name!r} accepts at most "
                f"max_exclude={info.max_exclude} items per user. Received: {len(indices)}"
            )
        rows.append(indices)
    return rows


def _vocab(vocabularies: Vocabularies | None, which: str) -> Vocabulary:
    if vocabularies is None:
        raise InvalidRequestError(
            "raw_ids=True needs the model's vocabularies: pass `vocabularies=` (a folder "
            "or a Vocabularies) to the client, or send dense indices with raw_ids=False."
        )
    return getattr(vocabularies, which)


def _item_vocab(vocabularies: Vocabularies | None, raw_ids: bool) -> Vocabulary | None:
    return vocabularies.items if raw_ids and vocabularies is not None else None


def _user_wire(info: ModelInfo, indices: np.ndarray) -> np.ndarray:
    # Triton wants the config's dims plus the batch dim: dims [1] (reshaped to [] inside
    # the model) means [B, 1] on the wire.
    spec = info.inputs.get(contract.USER_ID)
    dims = spec.dims if spec is not None else (1,)
    rank = len(dims) + (1 if info.max_batch_size > 0 else 0)
    if rank == 2:
        return indices.reshape(-1, 1)
    if rank == 1:
        return indices
    raise ModelContractError(
        f"Model {info.name!r}: input {contract.USER_ID!r} has dims {list(dims)}; "
        "expected [1] (batched) or [-1]."
    )


def _chunk_bounds(batch: int, max_batch_size: int) -> list[tuple[int, int]]:
    size = max_batch_size if max_batch_size > 0 else batch
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]


def _output(answer: Mapping[str, np.ndarray], name: str, rows: int, k: int) -> np.ndarray:
    array = answer.get(name)
    if array is None:
        raise ModelContractError(f"The server's answer has no output {name!r}.")
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] < k:
        raise ModelContractError(
            f"Output {name!r} has shape {array.shape}; expected [{rows}, >= {k}]."
        )
    return array[:, :k]


def _to_raw(vocab: Vocabulary | None, indices: np.ndarray) -> np.ndarray:
    if vocab is None:
        return indices
    flat = indices.ravel()
    if flat.size and flat.max() >= len(vocab):
        raise ModelContractError(
            f"The server returned item index {int(flat.max())}, outside the item "
            f"vocabulary of {len(vocab)} ids: the vocabularies do not match the model."
        )
    raw = np.empty(flat.shape, dtype=object)
    raw[:] = vocab.to_raw(flat).tolist() if flat.size else []
    return raw.reshape(indices.shape)
