"""Request validation and encoding: the caller's ids -> wire arrays (no I/O).

Three ways ids travel, chosen by the model's ``id_kind`` and the call's ``raw_ids``:

- raw-id model (``id_kind`` int / str), ``raw_ids=True``: the caller's raw ids are sent
  as they are (INT64, or UTF-8 BYTES); an optional vocabulary only pre-checks them.
- dense-index model, ``raw_ids=True``: raw ids are mapped to dense indices with the
  vocabularies of one version (the caller decodes the answer with the same ones).
- dense-index model, ``raw_ids=False``: the caller's dense indices are sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from client._ids import is_pad, pad_value, raw_array, shaped_ids, to_wire
from client.errors import InvalidRequestError, ModelContractError, UnknownRawIdError
from client.model_info import ModelInfo
from client.vocabularies import Vocabularies
from kmr import contract
from kmr.vocabulary import UnknownIdError, Vocabulary


def check_raw_mode(info: ModelInfo, raw_ids: bool) -> None:
    """A raw-id model takes raw ids only: ``raw_ids=False`` is refused."""
    if info.raw_ids and not raw_ids:
        raise InvalidRequestError(
            f"Model {info.name!r} speaks raw ids (id_kind={info.id_kind!r}): it takes and "
            "returns your own ids and has no dense indices to send. Call with raw_ids=True "
            "(the default)."
        )


def encode_users(
    info: ModelInfo, vocabularies: Vocabularies | None, user_ids: Any, raw_ids: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (the user ids as the result reports them, the wire values [B])."""
    if info.raw_ids:
        users = raw_array(user_ids, "user_ids", 1, info.id_kind)
        if vocabularies is not None:
            check_known(users, vocabularies.users, "user_ids", info.id_kind, allow_pad=False)
        return users, to_wire(users, info.id_kind)
    users = id_array(user_ids, "user_ids", 1, raw_ids)
    return users, indices(users, "user_ids", info.num_users, vocabularies, "users", raw_ids)


def encode_candidates(
    info: ModelInfo, vocabularies: Vocabularies | None, candidate_item_ids: Any,
    batch: int, raw_ids: bool,
) -> np.ndarray:
    """Validates the [B, N] candidates; returns their wire values."""
    name = "candidate_item_ids"
    if info.raw_ids:
        candidates = raw_array(candidate_item_ids, name, 2, info.id_kind)
    else:
        candidates = id_array(candidate_item_ids, name, 2, raw_ids)
    if len(candidates) != batch:
        raise InvalidRequestError(
            f"`{name}` needs one candidate list per user. Expected {batch} lists. "
            f"Received: {len(candidates)}"
        )
    n = candidates.shape[1]
    if n == 0:
        raise InvalidRequestError(f"`{name}` has zero candidates per user. Expected at least 1.")
    if n > info.max_candidates:
        raise InvalidRequestError(
            f"Too many candidates: model {info.name!r} accepts at most "
            f"max_candidates={info.max_candidates} per user. Received: {n}"
        )
    if not info.raw_ids:
        return indices(candidates, name, info.num_items, vocabularies, "items", raw_ids)
    if vocabularies is not None:
        check_known(candidates, vocabularies.items, name, info.id_kind, allow_pad=True)
    return to_wire(candidates, info.id_kind)


def encode_exclusions(
    info: ModelInfo, vocabularies: Vocabularies | None, exclude: Any, batch: int,
    raw_ids: bool,
) -> tuple[list[np.ndarray], int]:
    """One wire row per user (padding stripped); and how many unknown ids were dropped."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * batch, 0
    _check_exclude_shape(exclude, batch)
    rows, dropped = [], 0
    for i, row in enumerate(exclude):
        array = np.asarray(row, dtype=object if info.raw_ids else None)
        if array.ndim != 1:
            raise InvalidRequestError(
                f"`exclude[{i}]` must be a flat list of item ids. Received: shape {array.shape}"
            )
        if array.size == 0:
            rows.append(np.empty(0, dtype=np.int64))
            continue
        if info.raw_ids:
            kept, unknown = _raw_exclusions(info, vocabularies, array, f"exclude[{i}]")
            dropped += unknown
        else:
            array = id_array(array, f"exclude[{i}]", 1, raw_ids)
            if raw_ids:
                kept = indices(array, f"exclude[{i}]", None, vocabularies, "items", True)
            else:
                check_range(array, f"exclude[{i}]", info.num_items, allow_padding=True)
                kept = array[array != contract.INVALID_ID].astype(np.int64)
        if len(kept) > info.max_exclude:
            raise InvalidRequestError(
                f"`exclude[{i}]` is too long: model {info.name!r} accepts at most "
                f"max_exclude={info.max_exclude} items per user. Received: {len(kept)}"
            )
        rows.append(kept)
    return rows, dropped


def _check_exclude_shape(exclude: Any, batch: int) -> None:
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


def _raw_exclusions(
    info: ModelInfo, vocabularies: Vocabularies | None, array: np.ndarray, name: str
) -> tuple[np.ndarray, int]:
    """Raw exclusion ids to send: padding stripped, ids the vocabulary lacks dropped."""
    ids = raw_array(array, name, 1, info.id_kind)
    ids = ids[~is_pad(ids, info.id_kind)]
    unknown = 0
    if vocabularies is not None and len(ids):
        known = np.array([_knows(vocabularies.items, v) for v in ids.tolist()], dtype=bool)
        unknown = int((~known).sum())
        ids = ids[known]
    return to_wire(ids, info.id_kind), unknown


def pad_rows(rows: Sequence[np.ndarray], id_kind: str) -> np.ndarray:
    """Stacks exclusion rows into [len(rows), max(1, longest)], padded with the PAD id."""
    width = max([1, *(len(r) for r in rows)])
    pad = pad_value(id_kind)
    if id_kind == contract.IDS_STR:
        out = np.empty((len(rows), width), dtype=object)
        out[:] = pad
    else:
        out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _knows(vocab: Vocabulary, raw: Any) -> bool:
    try:
        return vocab.coerce(raw) in vocab
    except UnknownIdError:
        return False


def check_known(array: np.ndarray, vocab: Vocabulary, name: str, id_kind: str, *,
                allow_pad: bool) -> None:
    """Raises UnknownRawIdError naming the first raw id ``vocab`` lacks (padding allowed)."""
    values = array.ravel().tolist()
    pads = is_pad(array, id_kind).ravel().tolist() if allow_pad else [False] * len(values)
    try:
        vocab.to_indices([v for v, pad in zip(values, pads, strict=True) if not pad])
    except UnknownIdError as error:
        raise UnknownRawIdError(f"`{name}`: {error}") from error


def id_array(values: Any, name: str, ndim: int, raw_ids: bool) -> np.ndarray:
    """Ids of a dense-index model: raw ids (int / str) or integer dense indices."""
    array = shaped_ids(values, name, ndim)
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


def indices(
    array: np.ndarray,
    name: str,
    size: int | None,
    vocabularies: Vocabularies | None,
    which: str,
    raw_ids: bool,
) -> np.ndarray:
    """Dense indices of a dense-index model: mapped by the vocabulary, or checked."""
    if raw_ids:
        vocab = _vocab(vocabularies, which)
        try:
            return vocab.to_indices(array.ravel().tolist()).reshape(array.shape)
        except UnknownIdError as error:
            raise UnknownRawIdError(f"`{name}`: {error}") from error
    check_range(array, name, size)
    return array.astype(np.int64, copy=False)


def check_range(array: np.ndarray, name: str, size: int | None,
                allow_padding: bool = False) -> None:
    """Dense indices are >= 0 and, when the model's size is known, < size.

    Without a size (current exports: sizes are per-version facts) an index past the end
    is the graph's to answer: an empty row (user) or an empty slot (candidate).
    """
    bad_mask = array < 0
    if size is not None:
        bad_mask |= array >= size
    if allow_padding:
        bad_mask &= array != contract.INVALID_ID
    if bad_mask.any():
        where = tuple(int(i) for i in np.argwhere(bad_mask)[0])
        at = where[0] if len(where) == 1 else list(where)
        expected = f"[0, {size})" if size is not None else ">= 0"
        raise InvalidRequestError(
            f"`{name}` index out of range at {at}: expected dense indices in {expected}. "
            f"Received: {int(array[where])}"
        )


def _vocab(vocabularies: Vocabularies | None, which: str) -> Vocabulary:
    if vocabularies is None:
        raise InvalidRequestError(
            "raw_ids=True needs the model's vocabularies: pass `vocabularies=` (a folder "
            "or a Vocabularies) to the client, or send dense indices with raw_ids=False."
        )
    return getattr(vocabularies, which)


def user_wire(info: ModelInfo, values: np.ndarray) -> np.ndarray:
    """User ids in the wire shape: the config's dims plus the batch dim ([B, 1])."""
    spec = info.inputs.get(contract.USER_ID)
    dims = spec.dims if spec is not None else (1,)
    rank = len(dims) + (1 if info.max_batch_size > 0 else 0)
    if rank == 2:
        return values.reshape(-1, 1)
    if rank == 1:
        return values
    raise ModelContractError(
        f"Model {info.name!r}: input {contract.USER_ID!r} has dims {list(dims)}; "
        "expected [1] (batched) or [-1]."
    )


def chunk_bounds(batch: int, max_batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of at most ``max_batch_size`` rows (0: one chunk)."""
    size = max_batch_size if max_batch_size > 0 else batch
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]
