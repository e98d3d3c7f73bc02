"""Raw ids on the wire: validation, encoding and decoding for ``id_kind`` int / str models.

A raw-id model (`kmr.contract.IDS_INT` / `kmr.contract.IDS_STR`) takes the caller's own
ids and answers with them; the graph holds the vocabularies. This module turns what a
caller passes into the exact wire values (INT64, or UTF-8 BYTES) and the answer back into
Python ids. Empty slots are told by ``num_results``, never by the id value: a raw id may
be ``-1``, ``0`` or ``""``.

Example:
    >>> to_wire(raw_array([7, "8", np.int64(-1)], "user_ids", 1, "int"), "int").tolist()
    [7, 8, -1]
    >>> to_wire(raw_array(["0439708184", 42, ""], "user_ids", 1, "str"), "str").tolist()
    [b'0439708184', b'42', b'']
    >>> raw_array(["007"], "user_ids", 1, "int")
    Traceback (most recent call last):
    ...
    client.errors.InvalidRequestError: `user_ids`: '007' is not an int id. ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from client.errors import InvalidRequestError, ModelContractError
from kmr import contract
from kmr.vocabulary import canonical_int

_INT64 = (-(2**63), 2**63 - 1)
PAD_BYTES = contract.PAD_STR.encode("utf-8")


def pad_value(id_kind: str) -> int | bytes:
    """The wire value that pads a ragged id list of an ``id_kind`` model."""
    if id_kind == contract.IDS_STR:
        return PAD_BYTES
    return contract.PAD_INT if id_kind == contract.IDS_INT else contract.INVALID_ID


def int_id(value: Any, name: str) -> int:
    """An int-model id: an int (numpy ones too) or the canonical text of an int64.

    Raises:
        InvalidRequestError: anything else (``"007"``, ``" 7"``, ``7.0``, ``True``, 2**63).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and (parsed := canonical_int(value)) is not None:
        value = parsed
    if isinstance(value, int) and not isinstance(value, bool):
        if _INT64[0] <= value <= _INT64[1]:
            return value
        raise InvalidRequestError(
            f"`{name}`: {value!r} is not an int id: ids of an int model are int64 values "
            f"in [{_INT64[0]}, {_INT64[1]}]."
        )
    raise InvalidRequestError(
        f"`{name}`: {value!r} is not an int id. Ids of an int model are ints, or the "
        "canonical text of one (str(int(v)) == v: '7' is, '007', '+7' and ' 7' are not)."
    )


def str_id(value: Any, name: str) -> str:
    """A str-model id: a str (sent as UTF-8), an int (sent as its text) or UTF-8 bytes.

    Raises:
        InvalidRequestError: anything else (floats, bools, text that is not UTF-8).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, str):
            value.encode("utf-8")
            return value
    except UnicodeError as error:
        raise InvalidRequestError(f"`{name}`: {value!r} is not valid UTF-8 ({error}).") from error
    raise InvalidRequestError(
        f"`{name}`: {value!r} is not a str id. Ids of a str model are str (or an int, "
        f"sent as its text). Received type {type(value).__name__}."
    )


def shaped_ids(values: Any, name: str, ndim: int, dtype: Any = None) -> np.ndarray:
    """``values`` as an array of rank ``ndim`` with at least one row (any id type).

    Raises:
        InvalidRequestError: ragged rows, the wrong rank, or no rows.
    """
    try:
        array = np.asarray(values, dtype=dtype)
    except ValueError as error:  # numpy refuses ragged nested lists
        raise InvalidRequestError(
            f"`{name}` is ragged: every row must have the same length. ({error})"
        ) from error
    if ndim == 2 and array.ndim == 1 and (array.dtype == object) and any(
        isinstance(row, (list, tuple, np.ndarray)) for row in array
    ):
        raise InvalidRequestError(f"`{name}` is ragged: every row must have the same length.")
    if array.ndim != ndim:
        expected = "a 1-D sequence [B]" if ndim == 1 else "a 2-D sequence [B, N]"
        raise InvalidRequestError(
            f"`{name}` has the wrong rank. Expected {expected}. Received: shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise InvalidRequestError(f"`{name}` is empty. Expected at least one id.")
    return array


def raw_array(values: Any, name: str, ndim: int, id_kind: str) -> np.ndarray:
    """Validates raw ids of a raw-id model: int64 [..] (int) or object [..] of str (str).

    Raises:
        InvalidRequestError: wrong rank, ragged rows, no ids, or an id of the wrong kind.
    """
    array = shaped_ids(values, name, ndim, dtype=object)
    flat = array.ravel().tolist()
    if id_kind == contract.IDS_INT:
        return np.array([int_id(v, name) for v in flat], dtype=np.int64).reshape(array.shape)
    out = np.empty(len(flat), dtype=object)
    out[:] = [str_id(v, name) for v in flat]
    return out.reshape(array.shape)


def is_pad(array: np.ndarray, id_kind: str) -> np.ndarray:
    """Boolean mask of the reserved padding ids (``PAD_INT`` / ``PAD_STR``) in raw ids."""
    if id_kind == contract.IDS_INT:
        return array == contract.PAD_INT
    return np.array([v == contract.PAD_STR for v in array.ravel().tolist()],
                    dtype=bool).reshape(array.shape)


def to_wire(array: np.ndarray, id_kind: str) -> np.ndarray:
    """Raw ids as sent: int64 unchanged, str as an object array of UTF-8 bytes."""
    if id_kind != contract.IDS_STR:
        return array.astype(np.int64, copy=False)
    out = np.empty(array.size, dtype=object)
    out[:] = [v.encode("utf-8") for v in array.ravel().tolist()]
    return out.reshape(array.shape)


def wire_is_pad(ids: np.ndarray, id_kind: str) -> np.ndarray:
    """Boolean mask of the empty-slot ids in a ``top_item_ids`` answer of any id kind."""
    if id_kind == contract.IDS_INDEX:
        return ids.astype(np.int64, copy=False) < 0
    if id_kind == contract.IDS_INT:
        return ids.astype(np.int64, copy=False) == contract.PAD_INT
    return np.array([v in (PAD_BYTES, contract.PAD_STR) for v in ids.ravel().tolist()],
                    dtype=bool).reshape(ids.shape)


def decode_raw(ids: np.ndarray, id_kind: str, valid: np.ndarray) -> np.ndarray:
    """Raw ids of an answer as an object array: Python int / str, None in empty slots.

    Raises:
        ModelContractError: an int answer is not integral, or a str answer is not UTF-8.
    """
    out = np.empty(ids.size, dtype=object)
    values = ids.ravel().tolist()
    keep = valid.ravel().tolist()
    try:
        if id_kind == contract.IDS_INT:
            decoded = [int(v) if ok else None for v, ok in zip(values, keep, strict=True)]
        else:
            decoded = [(v.decode("utf-8") if isinstance(v, bytes) else str(v)) if ok else None
                       for v, ok in zip(values, keep, strict=True)]
    except (UnicodeError, TypeError, ValueError) as error:
        raise ModelContractError(
            f"The server's {contract.TOP_ITEM_IDS!r} cannot be read as {id_kind} ids: {error}"
        ) from error
    out[:] = decoded
    return out.reshape(ids.shape)
