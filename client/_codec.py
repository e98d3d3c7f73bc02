"""Planning and decoding shared by the sync and async clients (no I/O).

A ``plan_*`` function checks a request against the model facts, encodes the ids
(`client._encode`) and splits the batch into wire-ready chunks; `Plan.finish` checks
every chunk's answer against the contract and turns the answers back into one
`Recommendations`. One piece of code serves both clients and every protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client._encode import (
    check_raw_mode,
    chunk_bounds,
    encode_candidates,
    encode_exclusions,
    encode_users,
    pad_rows,
    user_wire,
)
from client._ids import decode_raw, wire_is_pad
from client._transport import answer_version
from client.errors import InvalidRequestError, ModelContractError
from client.model_info import ModelInfo
from client.vocabularies import Vocabularies
from kmr import contract
from kmr.vocabulary import Vocabulary


@dataclass(frozen=True)
class Recommendations:
    """Top-k results, one row per requested user, best first.

    Which slots hold an item is told by ``num_results`` (and `valid`), never by the id
    value: a raw id may be ``-1``, ``0`` or ``""``.

    Attributes:
        user_ids: The user ids as requested [B] (raw-id models: as sent, e.g. the text
            of an int for a str model).
        item_ids: Shape [B, k]. Raw item ids (dtype object: Python int for int-id
            models, str for str-id models; None in empty slots) when the call used raw
            ids; otherwise dense indices (int64, -1 in empty slots).
        scores: float32 [B, k]; -inf in empty slots (the server's finite
            `kmr.contract.EMPTY_SCORE` is turned back into -inf).
        item_indices: Dense item indices, int64 [B, k], -1 in empty slots, for
            dense-index models. None for raw-id models: their graph maps ids itself and
            no dense index ever reaches the client.
        positions: Rerank only: int64 [B, k] position of each item in that user's
            candidate list, -1 in empty slots. None for retrieve models.
        num_results: int64 [B]: how many leading slots of each row hold an item (at
            most k). None only for a result built by hand.
        model_version: The model version that answered, e.g. ``"3"``. When the chunks
            of one call were answered by several versions (a hot swap mid-call), their
            versions joined by ``","`` in numeric order (``"3,4"``); every chunk was
            then checked (and, for dense-index models, decoded) with its own version's
            facts. ``""`` when the server did not say.

    Example:
        >>> r = Recommendations(user_ids=np.array(["u"]), item_ids=np.array([[-1, None]]),
        ...     scores=np.array([[0.5, -np.inf]], dtype=np.float32),
        ...     num_results=np.array([1]), model_version="2")
        >>> r.valid.tolist(), r.item_ids[r.valid].tolist()
        ([[True, False]], [-1])
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    item_indices: np.ndarray | None = None
    positions: np.ndarray | None = None
    num_results: np.ndarray | None = None
    model_version: str = ""

    @property
    def valid(self) -> np.ndarray:
        """Boolean [B, k]: True where a slot holds an item (from ``num_results``)."""
        if self.num_results is not None:
            k = self.scores.shape[1]
            return np.arange(k)[None, :] < np.asarray(self.num_results).reshape(-1, 1)
        if self.item_indices is not None:
            return self.item_indices != contract.INVALID_ID
        ids = np.asarray(self.item_ids)
        if ids.dtype == object:
            return np.vectorize(lambda v: v is not None, otypes=[bool])(ids)
        return ids != contract.INVALID_ID

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class Plan:
    """Wire-ready chunks of one request and what is needed to decode the answers.

    Attributes:
        item_vocabulary: Set when the answers' dense indices are decoded with it (a
            dense-index model called with raw ids).
        version: The version whose vocabularies encoded the ids (None: none used, or
            vocabularies whose version is not known yet).
        unknown_exclusions: Exclusion ids dropped because the vocabulary lacks them.
        rebuild: Re-encodes the same request for another version's vocabularies; set
            when the ids were mapped with a version's vocabularies (only that version's
            answers may be decoded).
    """

    chunks: list[dict[str, np.ndarray]]
    outputs: tuple[str, ...]
    k: int
    user_ids: np.ndarray
    id_kind: str = contract.IDS_INDEX
    item_vocabulary: Vocabulary | None = None
    version: str | None = None
    unknown_exclusions: int = 0
    rebuild: Callable[[str, Vocabularies], Plan] | None = field(
        default=None, compare=False, repr=False)

    def finish(self, answers: Sequence[tuple[Plan, Mapping[str, Any]]]) -> Recommendations:
        """Checks and decodes each chunk (with the plan that sent it), in order.

        Raises:
            ModelContractError: an answer breaks the contract (missing output, wrong
                shape, ``num_results`` inconsistent with the ids, index outside the
                vocabulary).
        """
        parts = [plan.decode(i, answer) for i, (plan, answer) in enumerate(answers)]
        merged = {name: np.concatenate([p[name] for p in parts])
                  for name in parts[0] if parts[0][name] is not None}
        versions = {answer_version(answer) for _, answer in answers} - {""}
        return Recommendations(
            user_ids=self.user_ids,
            item_ids=merged["item_ids"],
            scores=merged["scores"],
            item_indices=merged.get("item_indices"),
            positions=merged.get("positions"),
            num_results=merged["num_results"],
            model_version=",".join(sorted(versions, key=_version_key)),
        )

    def decode(self, index: int, answer: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
        """One chunk's answer, checked and decoded (item ids sliced to k)."""
        rows, k = len(self.chunks[index][contract.USER_ID]), self.k
        ids = _output(answer, contract.TOP_ITEM_IDS, rows, k)
        width = ids.shape[1]
        scores = _output(answer, contract.TOP_SCORES, rows, k, width)
        positions = None
        if contract.TOP_POSITIONS in self.outputs:
            positions = _output(answer, contract.TOP_POSITIONS, rows, k, width).astype(np.int64)
        pad = wire_is_pad(ids, self.id_kind)
        if contract.NUM_RESULTS in self.outputs:
            counts = _num_results(answer, rows, width)
        else:  # an older dense-index export: empty slots are the -1 ids
            counts = (~pad).sum(axis=1).astype(np.int64)
        _check_counts(counts, pad, positions)
        valid = np.arange(k)[None, :] < counts[:, None]
        ids = ids[:, :k]
        indices = None
        if self.id_kind == contract.IDS_INDEX:
            indices = np.where(valid, ids.astype(np.int64), contract.INVALID_ID)
            item_ids = _to_raw(self.item_vocabulary, indices)
        else:
            item_ids = decode_raw(ids, self.id_kind, valid)
        return {
            "item_ids": item_ids,
            "scores": np.where(valid, scores[:, :k].astype(np.float32), -np.inf).astype(
                np.float32),
            "item_indices": indices,
            "positions": None if positions is None else np.where(
                valid, positions[:, :k], -1),
            "num_results": np.minimum(counts, k),
        }


@dataclass(frozen=True)
class RecommendRequest:
    """The arguments of one `RecommenderClient.recommend` call (see there)."""

    user_ids: Any
    k: int | None = None
    exclude: Any = None
    raw_ids: bool = True
    nprobe: int | None = None
    rescore: int | None = None


def plan_recommend(
    info: ModelInfo,
    vocabularies: Vocabularies | None,
    request: RecommendRequest,
    version: str | None = None,
) -> Plan:
    """Validates and encodes a retrieve request (see `RecommenderClient.recommend`)."""
    _check_kind(info, contract.GRAPH_RETRIEVE, "recommend", "rerank")
    check_raw_mode(info, request.raw_ids)
    k = _check_k(request.k, info)
    setting = _check_settings(request, info)
    users, wire = encode_users(info, vocabularies, request.user_ids, request.raw_ids)
    rows, dropped = encode_exclusions(info, vocabularies, request.exclude, len(users),
                                      request.raw_ids)
    chunks = []
    for start, stop in chunk_bounds(len(users), info.max_batch_size):
        chunk = {
            contract.USER_ID: user_wire(info, wire[start:stop]),
            contract.EXCLUDE_ITEM_IDS: pad_rows(rows[start:stop], info.id_kind),
        }
        if setting is not None:
            name, value = setting
            chunk[name] = np.full((stop - start, 1), value, np.int64)
        chunks.append(chunk)
    return _plan(info, chunks, k, users, vocabularies, request.raw_ids, version, dropped)


def _check_settings(request: RecommendRequest, info: ModelInfo) -> tuple[str, int] | None:
    """``(input name, wire value)`` of the model's index setting (0: the exported
    default); None for an exact model. A setting the model does not take is refused."""
    wanted = contract.INDEX_SETTINGS.get(info.index)
    for name in (contract.NPROBE, contract.RESCORE):
        value = getattr(request, name)
        if value is None:
            continue
        if name != wanted:
            owner = {contract.NPROBE: "an IVF", contract.RESCORE: "an int8"}[name]
            raise InvalidRequestError(
                f"Model {info.name!r} has index {info.index!r}: `{name}` only applies to "
                f"{owner} model. Received: {name}={value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidRequestError(
                f"`{name}` must be a positive int (values above the model's maximum are "
                f"clamped to it) or None for the exported default. Received: {value!r}")
    if wanted is None:
        return None
    value = getattr(request, wanted)
    return wanted, 0 if value is None else int(value)


def plan_rerank(
    info: ModelInfo,
    vocabularies: Vocabularies | None,
    user_ids: Any,
    candidate_item_ids: Any,
    *,
    k: int | None,
    raw_ids: bool,
    version: str | None = None,
) -> Plan:
    """Validates and encodes a rerank request (see `RecommenderClient.rerank`)."""
    _check_kind(info, contract.GRAPH_RERANK, "rerank", "recommend")
    check_raw_mode(info, raw_ids)
    k = _check_k(k, info)
    users, wire = encode_users(info, vocabularies, user_ids, raw_ids)
    items = encode_candidates(info, vocabularies, candidate_item_ids, len(users), raw_ids)
    chunks = [
        {
            contract.USER_ID: user_wire(info, wire[start:stop]),
            contract.ITEM_IDS: items[start:stop],
        }
        for start, stop in chunk_bounds(len(users), info.max_batch_size)
    ]
    return _plan(info, chunks, k, users, vocabularies, raw_ids, version, 0)


def _plan(info: ModelInfo, chunks: list[dict[str, np.ndarray]], k: int, users: np.ndarray,
          vocabularies: Vocabularies | None, raw_ids: bool, version: str | None,
          dropped: int) -> Plan:
    decodes = raw_ids and not info.raw_ids and vocabularies is not None
    return Plan(
        chunks=chunks,
        outputs=info.outputs_to_request,
        k=k,
        user_ids=users,
        id_kind=info.id_kind,
        item_vocabulary=vocabularies.items if decodes and vocabularies else None,
        version=version if vocabularies is not None else None,
        unknown_exclusions=dropped,
    )


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


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _output(answer: Mapping[str, Any], name: str, rows: int, k: int,
            width: int | None = None) -> np.ndarray:
    array = answer.get(name)
    if array is None:
        raise ModelContractError(f"The server's answer has no output {name!r}.")
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] < k or (
        width is not None and array.shape[1] != width
    ):
        expected = f"[{rows}, {width}]" if width is not None else f"[{rows}, >= {k}]"
        raise ModelContractError(
            f"Output {name!r} has shape {array.shape}; expected {expected}."
        )
    return array


def _num_results(answer: Mapping[str, Any], rows: int, width: int) -> np.ndarray:
    array = answer.get(contract.NUM_RESULTS)
    if array is None:
        raise ModelContractError(f"The server's answer has no output {contract.NUM_RESULTS!r}.")
    array = np.asarray(array)
    if array.shape not in ((rows, 1), (rows,)) or array.dtype.kind not in "iu":
        raise ModelContractError(
            f"Output {contract.NUM_RESULTS!r} has shape {array.shape} (dtype {array.dtype}); "
            f"expected int64 [{rows}, 1]."
        )
    counts = array.reshape(rows).astype(np.int64)
    bad = (counts < 0) | (counts > width)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ModelContractError(
            f"Output {contract.NUM_RESULTS!r} is {int(counts[row])} in row {row}; expected "
            f"a count in [0, {width}]."
        )
    return counts


def _check_counts(counts: np.ndarray, pad: np.ndarray, positions: np.ndarray | None) -> None:
    """The first ``num_results`` slots hold items, the others are empty, in every output."""
    full = np.arange(pad.shape[1])[None, :] < counts[:, None]
    wrong = full == pad
    if positions is not None:
        wrong |= full != (positions >= 0)
    if wrong.any():
        row, slot = (int(i) for i in np.argwhere(wrong)[0])
        state = "is empty" if full[row, slot] else "holds an item"
        raise ModelContractError(
            f"The server's answer is inconsistent: row {row} has "
            f"{contract.NUM_RESULTS}={int(counts[row])} but slot {slot} {state} "
            f"({contract.TOP_ITEM_IDS} / {contract.TOP_POSITIONS} disagree with the count)."
        )


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
