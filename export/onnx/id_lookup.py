"""Chooses how a raw-id graph maps each vocabulary, and lays the tables out for it.

Three lookups (`export.onnx.raw_ids`): ``arithmetic`` for ids ``a, a+1, ...`` (no
table), ``label_encoder`` (``ai.onnx.ml.LabelEncoder``: one op, ~80 bytes per id in
onnxruntime) and ``compact`` (`export.onnx.compact_ids`: nine ops, ~10 bytes per id).
A compact vocabulary is served in slot order: its embedding rows are permuted with it,
so the graph's answers (raw ids) are the same as with any other lookup.

Example:
    >>> import numpy as np
    >>> from kmr.vocabulary import Vocabulary
    >>> from export.onnx.graphs import RecommenderWeights
    >>> users, items = Vocabulary([0, 1]), Vocabulary([7 * i + 3 for i in range(50)])
    >>> weights = RecommenderWeights(np.zeros((2, 4), np.float32),
    ...                              np.arange(200, dtype=np.float32).reshape(50, 4), None)
    >>> served = lay_out(weights, users, items, compact=(False, True))
    >>> served.lookups
    {'users': 'arithmetic', 'items': 'compact'}
    >>> row = served.ids.items.ids.index(24)  # item 24 = 7 * 3 + 3 is row 3 trained
    >>> served.weights.items[row].tolist()
    [12.0, 13.0, 14.0, 15.0]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from export.errors import ExportError
from export.onnx.compact_ids import build_compact_lookup, check_with_onnxruntime
from export.onnx.graphs import RecommenderWeights
from export.onnx.raw_ids import ServedIds, contiguous_start
from kmr import contract
from kmr.vocabulary import Vocabulary

AUTO, FAST, COMPACT = "auto", "fast", "compact"
MODES = (AUTO, FAST, COMPACT)
ARITHMETIC, LABEL_ENCODER = "arithmetic", "label_encoder"


@dataclass(frozen=True)
class ServedLayout:
    """What one raw-id graph is built from.

    Attributes:
        weights: The tables, rows permuted for a compact vocabulary.
        ids: The vocabularies in the graph's row order, with their compact lookups.
        lookups: ``{"users": ..., "items": ...}``: the lookup each uses (for the manifest).
    """

    weights: RecommenderWeights
    ids: ServedIds
    lookups: dict[str, str]


def wants_compact(mode: str, kind: str,
                  vocabularies: tuple[Vocabulary, Vocabulary]) -> tuple[bool, bool]:
    """Which of ``(users, items)`` should get the compact lookup under ``mode``.

    ``auto``: the int vocabularies of a retrieve graph (exact, IVF or int8: its scoring
    takes far longer than the lookup's few microseconds). ``compact``: every int
    vocabulary.

    Raises:
        ExportError: ``compact`` asked for string ids.
    """
    if mode == FAST:
        return False, False
    if mode == COMPACT:
        strings = [what for what, v in zip(("user", "item"), vocabularies, strict=True)
                   if v.kind != "int"]
        if strings:
            raise ExportError(f"id_lookup='compact' needs int ids; the {strings[0]} ids are "
                              "strings. Use id_lookup='auto' or 'fast'.")
    elif kind != contract.GRAPH_RETRIEVE:
        return False, False
    return tuple(v.kind == "int" and contiguous_start(v) is None for v in vocabularies)


def lay_out(weights: RecommenderWeights, users: Vocabulary, items: Vocabulary,
            compact: tuple[bool, bool]) -> ServedLayout:
    """Builds the compact lookups asked for (checked in onnxruntime on every id) and
    permutes the tables and vocabularies into their slot order.

    A vocabulary the lookup cannot place (rare; tiny vocabularies) keeps the LabelEncoder.
    """
    vocabularies, lookups, names = [users, items], [None, None], {}
    tables = {"users": weights.users, "items": weights.items}
    for i, (what, vocabulary, wanted) in enumerate(
            zip(("users", "items"), vocabularies, compact, strict=True)):
        lookup = build_compact_lookup(np.fromiter(vocabulary.ids, np.int64, len(vocabulary))
                                      ) if wanted else None
        if lookup is not None:
            try:
                check_with_onnxruntime(lookup)
            except ValueError as error:
                raise ExportError(str(error)) from error
            tables[what] = tables[what][lookup.order]
            vocabularies[i] = Vocabulary(lookup.ids_in_slot_order.tolist(), vocabulary.name)
            lookups[i] = lookup
        names[what] = (COMPACT if lookup is not None else
                       ARITHMETIC if contiguous_start(vocabulary) is not None else LABEL_ENCODER)
    ids = ServedIds(vocabularies[0], vocabularies[1], (lookups[0], lookups[1]))
    return ServedLayout(replace(weights, **tables), ids, names)
