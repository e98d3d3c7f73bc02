"""A compact raw id -> index lookup for sparse int ids: a minimal perfect hash in ONNX ops.

``ai.onnx.ml.LabelEncoder`` (the fast lookup, `export.onnx.raw_ids`) holds a hash map:
onnxruntime spends about 80 bytes per id on it (measured: +79 MB for 1M ids, 10x the
ids themselves). This lookup spends about 10.2 bytes per id, with standard ops only:

* ``x = id * multiplier`` (int64, wrapping), ``bucket = x mod buckets`` (a prime),
  ``slot = (x + displacement[bucket]) mod n`` -- every id of the vocabulary gets its own
  slot in ``[0, n)`` (a minimal perfect hash, built here with numpy);
* the graph's dense index *is* the slot: the export permutes the embedding rows and the
  vocabulary into slot order (`CompactLookup.order`), so no slot -> index table exists;
* ``raw[slot] == id`` (the raw-id table the answer is decoded with anyway) tells a known
  id from an unknown one, which gets -1 as with the LabelEncoder.

The price is nine small ops instead of one: about 3.5 microseconds per encoded input at
small batches, and about 2.6x the LabelEncoder's time per id at large ones
(`benchmarks/results/id_floor.md`). It suits the retrieve graph
(one user, a few exclusions, milliseconds of scoring), which is where ``auto`` uses it.

The arithmetic wraps around in int64 exactly as numpy and onnxruntime compute it; the
export checks every id of the vocabulary through onnxruntime (`check_with_onnxruntime`).

Example:
    >>> ids = np.array([7 * i + 3 for i in range(1000)] + [-5, 2**63 - 1], np.int64)
    >>> lookup = build_compact_lookup(ids)
    >>> bool(np.array_equal(np.sort(lookup.slots(ids)), np.arange(len(ids))))
    True
    >>> bool(np.array_equal(ids[lookup.order], lookup.ids_in_slot_order))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kmr import contract

# 1.8 ids per bucket (2.2 bytes of int32 displacement per id): ids in an arithmetic
# progression fill the buckets evenly (1 or 2 ids each: 11% of the ids alone), random ids
# as Poisson(1.8) (16%); those one-id buckets take the last free slots directly. (2.0
# leaves a progression no one-id bucket, and its last pairs find no free pair of slots.)
IDS_PER_BUCKET = 1.8
_ATTEMPTS = 32  # each succeeds with p ~ exp(-IDS_PER_BUCKET / 2): all fail ~ 5e-8
_ROUNDS = 200  # guessing rounds per bucket size before the full search


@dataclass(frozen=True)
class CompactLookup:
    """A minimal perfect hash of one int vocabulary.

    Attributes:
        multiplier: Odd int64 the ids are multiplied with (wrapping).
        buckets: Number of displacement buckets.
        displacement: ``[buckets]`` int32 (int64 from 2**31 ids), each in ``[0, n)``.
        order: ``[n]``: slot ``s`` holds the id at index ``order[s]`` of the vocabulary.
        ids_in_slot_order: ``[n]`` int64: the raw id of each slot (``ids[order]``).
    """

    multiplier: int
    buckets: int
    displacement: np.ndarray
    order: np.ndarray
    ids_in_slot_order: np.ndarray

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """The slot the graph computes for each id (numpy; unknown ids get some slot too)."""
        return _slots(np.asarray(ids, np.int64), self.multiplier, self.buckets,
                      self.displacement, len(self.order))

    @property
    def nbytes(self) -> int:
        """Bytes of the tables the graph holds for this lookup (raw ids + displacement)."""
        return int(self.ids_in_slot_order.nbytes + self.displacement.nbytes)


def _slots(ids: np.ndarray, multiplier: int, buckets: int, displacement: np.ndarray,
           n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = ids * np.int64(multiplier)
        return np.mod(x + displacement[np.mod(x, buckets)].astype(np.int64), n)


def _bucket_count(n: int) -> int:
    """The first prime >= n / IDS_PER_BUCKET that does not divide n.

    (With ``buckets | n``, ``x mod n`` fixes ``x mod buckets``: two ids of one bucket would
    share more of their slot offset than chance says.)
    """
    candidate = max(2, int(np.ceil(n / IDS_PER_BUCKET)))
    while n % candidate == 0 or any(
            candidate % p == 0 for p in range(2, int(candidate ** 0.5) + 1)):
        candidate += 1
    return candidate


def build_compact_lookup(ids: np.ndarray, *, seed: int = 0) -> CompactLookup | None:
    """Builds the lookup of distinct int64 ``ids``; None when no attempt placed every id.

    Each attempt draws another multiplier; an attempt fails when two ids of one bucket
    have the same ``x mod n`` (no displacement separates them), which a cheap check
    finds before any placing.
    """
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    buckets = _bucket_count(n)
    for _ in range(_ATTEMPTS):
        multiplier = int(rng.integers(1, 2**62)) | 1
        placed = _place(ids, multiplier, buckets, rng)
        if placed is not None:
            displacement, slot_of_id = placed
            order = np.empty(n, np.int64)
            order[slot_of_id] = np.arange(n)
            return CompactLookup(multiplier, buckets, displacement, order, ids[order])
    return None


def _place(ids: np.ndarray, multiplier: int, buckets: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Displacements that give every id its own slot, largest buckets first."""
    n = len(ids)
    with np.errstate(over="ignore"):
        x = ids * np.int64(multiplier)
    bucket = np.mod(x, buckets)
    if len(np.unique(bucket * n + np.mod(x, n))) < n:
        return None  # two ids of one bucket collide at every displacement
    by_bucket = np.argsort(bucket, kind="stable")
    sizes = np.bincount(bucket, minlength=buckets)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    taken = np.zeros(n, bool)
    displacement = np.zeros(buckets, np.int32 if n < 2**31 else np.int64)
    slot_of_id = np.empty(n, np.int64)
    for size in range(int(sizes.max()), 0, -1):
        group = np.flatnonzero(sizes == size)
        if not len(group):
            continue
        members = by_bucket[starts[group][:, None] + np.arange(size)]
        if size == 1:
            ok = _place_singletons(x, members[:, 0], group, taken, displacement, slot_of_id)
        else:
            ok = _place_group(x, members, group, taken, displacement, slot_of_id, rng)
        if not ok:
            return None
    return displacement, slot_of_id


def _place_group(x: np.ndarray, members: np.ndarray, group: np.ndarray, taken: np.ndarray,
                 displacement: np.ndarray, slot_of_id: np.ndarray,
                 rng: np.random.Generator) -> bool:
    """Buckets of one size: rounds of guesses for all of them at once, then a full search.

    A guess sends a bucket's first id to a random free slot; the bucket fits when its
    other ids land on free slots too, and no other bucket of the round claimed them.
    """
    n = len(taken)
    pending = np.arange(len(group))
    claim = np.full(n, -1, np.int64)
    for _ in range(_ROUNDS):
        if not len(pending):
            return True
        free = np.flatnonzero(~taken)
        keys = x[members[pending]]
        targets = free[rng.integers(0, len(free), len(pending))]
        candidate = np.mod(targets - np.mod(keys[:, 0], n), n)
        slots = _landing(keys, candidate, n)
        rows = np.flatnonzero(_fits(slots, taken))
        claim[slots[rows].ravel()] = np.repeat(rows, slots.shape[1])  # one winner per slot
        won = rows[(claim[slots[rows]] == rows[:, None]).all(axis=1)]
        claim[slots[rows].ravel()] = -1
        _take(won, pending, slots, candidate, members, group, taken, displacement, slot_of_id)
        pending = np.delete(pending, won)
    for row in pending:  # the few left: every free slot for the first id, one at a time
        free = np.flatnonzero(~taken)
        keys = np.broadcast_to(x[members[row]], (len(free), members.shape[1]))
        candidate = np.mod(free - np.mod(keys[:, 0], n), n)
        slots = _landing(keys, candidate, n)
        fits = np.flatnonzero(_fits(slots, taken))
        if not len(fits):
            return False
        _take(fits[:1], np.full(len(free), row), slots, candidate, members, group, taken,
              displacement, slot_of_id)
    return True


def _landing(keys: np.ndarray, candidate: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.mod(keys + candidate[:, None], n)


def _fits(slots: np.ndarray, taken: np.ndarray) -> np.ndarray:
    distinct = (np.diff(np.sort(slots, axis=1), axis=1) != 0).all(axis=1)
    return ~taken[slots].any(axis=1) & distinct


def _take(won: np.ndarray, rows: np.ndarray, slots: np.ndarray, candidate: np.ndarray,
          members: np.ndarray, group: np.ndarray, taken: np.ndarray,
          displacement: np.ndarray, slot_of_id: np.ndarray) -> None:
    """Records guesses ``won`` (positions in ``slots``) of buckets ``group[rows[won]]``."""
    taken[slots[won].ravel()] = True
    displacement[group[rows[won]]] = candidate[won]
    slot_of_id[members[rows[won]].ravel()] = slots[won].ravel()


def _place_singletons(x: np.ndarray, members: np.ndarray, group: np.ndarray,
                      taken: np.ndarray, displacement: np.ndarray,
                      slot_of_id: np.ndarray) -> bool:
    """The last ids take the free slots directly: ``d = (free - x) mod n``."""
    n = len(taken)
    free = np.flatnonzero(~taken)[: len(members)]
    candidate = np.mod(free - np.mod(x[members], n), n)
    with np.errstate(over="ignore"):
        landed = np.mod(x[members] + candidate, n)
    if not np.array_equal(landed, free):
        return False  # x + d wrapped around int64 (about 1 in 10^12 ids): next attempt
    taken[free] = True
    displacement[group] = candidate
    slot_of_id[members] = free
    return True


def encoder_nodes(graph: onnx.GraphProto, raw: str, index: str, lookup: CompactLookup,
                  raw_table: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes computing ``index`` (slot, or -1 when unknown) from the int64 input ``raw``.

    ``raw_table`` names an initializer whose first n entries are
    ``lookup.ids_in_slot_order`` (the item decoder's table serves both).
    """
    def name(suffix: str) -> str:
        return f"{prefix}{raw}_{suffix}"

    graph.initializer.extend([
        numpy_helper.from_array(np.array(lookup.multiplier, np.int64), name("multiplier")),
        numpy_helper.from_array(np.array(lookup.buckets, np.int64), name("buckets")),
        numpy_helper.from_array(np.array(len(lookup.order), np.int64), name("n")),
        numpy_helper.from_array(lookup.displacement, name("displacement")),
        numpy_helper.from_array(np.array(-1, np.int64), name("unknown")),
    ])
    node = helper.make_node
    return [
        node("Mul", [raw, name("multiplier")], [name("x")]),
        node("Mod", [name("x"), name("buckets")], [name("bucket")]),
        node("Gather", [name("displacement"), name("bucket")], [name("shift32")], axis=0),
        node("Cast", [name("shift32")], [name("shift")], to=onnx.TensorProto.INT64),
        node("Add", [name("x"), name("shift")], [name("shifted")]),
        node("Mod", [name("shifted"), name("n")], [name("slot")]),
        node("Gather", [raw_table, name("slot")], [name("holder")], axis=0),
        node("Equal", [name("holder"), raw], [name("known")]),
        node("Where", [name("known"), name("slot"), name("unknown")], [index]),
    ]


def encoder_model(lookup: CompactLookup) -> onnx.ModelProto:
    """A model of the lookup alone: int64 ``ids [n]`` -> ``index [n]`` (-1: unknown)."""
    graph = helper.make_graph([], "compact_lookup", [
        helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n"])], [
        helper.make_tensor_value_info("index", onnx.TensorProto.INT64, ["n"])])
    table = np.append(lookup.ids_in_slot_order, np.int64(contract.PAD_INT))
    graph.initializer.append(numpy_helper.from_array(table, "raw_table"))
    graph.node.extend(encoder_nodes(graph, "ids", "index", lookup, "raw_table", "lookup_"))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def check_with_onnxruntime(lookup: CompactLookup, *, chunk: int = 1 << 20) -> None:
    """Runs every id through the lookup's ONNX nodes in onnxruntime: slot s must give s.

    Raises:
        ValueError: an id does not come back at its slot (names the first one).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(encoder_model(lookup).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    ids = lookup.ids_in_slot_order
    for start in range(0, len(ids), chunk):
        got = session.run(None, {"ids": ids[start:start + chunk]})[0]
        wrong = np.flatnonzero(got != np.arange(start, start + len(got)))
        if len(wrong):
            raise ValueError(f"The compact id lookup sends id {int(ids[start + wrong[0]])} to "
                             f"index {int(got[wrong[0]])} instead of {start + int(wrong[0])} "
                             "in onnxruntime.")
