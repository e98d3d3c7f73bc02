"""Ids travel with the model: the vocabularies baked into the served ONNX graph.

The served graphs are converted with dense indices (`export.onnx.graphs`). This module
rewires a converted graph so that it speaks the user's raw ids, with standard ops only
(onnxruntime and Triton's onnxruntime backend run them, no custom ops):

* every id input is mapped to its dense index (an unknown id -> -1, which the dense graph
  already treats as "no such user / item": an unknown candidate is never recommended, an
  unknown exclusion is ignored, an unknown user gets an empty row): by arithmetic when the
  ids are ``a, a+1, ...``, else by an ``ai.onnx.ml.LabelEncoder`` (fast, ~80 bytes per id
  in onnxruntime) or, for int ids, by the compact lookup of `export.onnx.compact_ids`
  (~10 bytes per id, nine small ops);
* ``top_item_ids`` becomes a ``Gather`` over the raw-id table ``[raw_0, ..., PAD]``
  (index -1 reads the reserved ``PAD_INT`` / ``PAD_STR`` at the end);
* every graph (raw or index) gets ``num_results`` ``[B, 1]`` (how many leading slots of
  the row hold an item) and finite scores (``EMPTY_SCORE`` instead of ``-inf``), so an
  HTTP/JSON answer is valid JSON and a caller can always tell an empty slot from an item,
  whatever the raw ids are (``-1``, ``0`` and ``""`` may be real ids).

Example:
    >>> from kmr.vocabulary import Vocabulary
    >>> id_kind(Vocabulary(["007", "7"])), id_kind(Vocabulary([3, -1]))
    ('str', 'int')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.onnx.compact_ids import CompactLookup, encoder_nodes
from kmr import contract
from kmr.vocabulary import Vocabulary

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2
_PREFIX = "served_ids_"
_RAW_ITEMS = f"{_PREFIX}raw_items"


@dataclass(frozen=True)
class ServedIds:
    """The vocabularies a raw-id graph is built with, in the graph's row order.

    Attributes:
        users: User vocabulary (row ``i`` of the user table is ``users.ids[i]``).
        items: Item vocabulary, the same way.
        compact: The compact lookups (`export.onnx.compact_ids`) of the users / items,
            None each where the vocabulary uses arithmetic or the LabelEncoder.
    """

    users: Vocabulary
    items: Vocabulary
    compact: tuple[CompactLookup | None, CompactLookup | None] = (None, None)


def id_kind(vocabulary: Vocabulary) -> str:
    """``"int"`` when every raw id is an int (INT64 on the wire), else ``"str"`` (BYTES)."""
    return contract.IDS_INT if vocabulary.kind == "int" else contract.IDS_STR


def check_reserved(vocabulary: Vocabulary, what: str) -> None:
    """Refuses a vocabulary holding a reserved padding id (`kmr.contract.PAD_INT` / ``PAD_STR``)."""
    reserved = contract.PAD_INT if vocabulary.kind == "int" else contract.PAD_STR
    if reserved in vocabulary:
        raise ExportError(
            f"The {what} vocabulary holds the id {reserved!r}, which served models reserve "
            "for empty slots and padding: rename that id and retrain, or export with "
            "--ids index.")


def onnx_id_type(kind: str) -> int:
    """The ONNX element type of an id tensor of this id kind."""
    return TensorProto.STRING if kind == contract.IDS_STR else TensorProto.INT64


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _rename_producer(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]


def _label_encoder(raw: str, index: str, vocabulary: Vocabulary) -> onnx.NodeProto:
    values = list(range(len(vocabulary)))
    keys = ({"keys_strings": [str(i) for i in vocabulary.ids]} if vocabulary.kind == "str"
            else {"keys_int64s": [int(i) for i in vocabulary.ids]})
    return helper.make_node("LabelEncoder", [raw], [index], domain=ML_DOMAIN,
                            name=f"{_PREFIX}encode_{raw}", values_int64s=values,
                            default_int64=contract.INVALID_ID, **keys)


def _raw_table(vocabulary: Vocabulary, name: str) -> onnx.TensorProto:
    """``[raw_0, raw_1, ..., PAD]``: a Gather at index -1 reads PAD (negative indices count
    from the end)."""
    if vocabulary.kind == "str":
        values = [*map(str, vocabulary.ids), contract.PAD_STR]
        return helper.make_tensor(name, TensorProto.STRING, [len(values)],
                                  [v.encode("utf-8") for v in values])
    values = np.fromiter(vocabulary.ids, np.int64, len(vocabulary))
    return numpy_helper.from_array(np.append(values, np.int64(contract.PAD_INT)), name)


def _set_type(value_info: onnx.ValueInfoProto, elem_type: int) -> None:
    value_info.type.tensor_type.elem_type = elem_type


def _finish_outputs(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], str]:
    """Nodes for finite scores and ``num_results``; returns them and the index output."""
    index = f"{_PREFIX}top_index"
    raw_scores = f"{_PREFIX}top_scores"
    for old, new in ((contract.TOP_ITEM_IDS, index), (contract.TOP_SCORES, raw_scores)):
        _rename_producer(graph, old, new)
        _rename_uses(graph, old, new)  # the graph may read its own outputs
    graph.initializer.extend([
        numpy_helper.from_array(np.array(contract.EMPTY_SCORE, np.float32),
                                f"{_PREFIX}empty_score"),
        numpy_helper.from_array(np.array(0, np.int64), f"{_PREFIX}zero"),
        numpy_helper.from_array(np.array([1], np.int64), f"{_PREFIX}axis1"),
    ])
    n = helper.make_node
    nodes = [
        n("IsInf", [raw_scores], [f"{_PREFIX}empty"], detect_positive=0),
        n("Where", [f"{_PREFIX}empty", f"{_PREFIX}empty_score", raw_scores],
          [contract.TOP_SCORES]),
        n("GreaterOrEqual", [index, f"{_PREFIX}zero"], [f"{_PREFIX}filled"]),
        n("Cast", [f"{_PREFIX}filled"], [f"{_PREFIX}filled_i"], to=TensorProto.INT64),
        n("ReduceSum", [f"{_PREFIX}filled_i", f"{_PREFIX}axis1"], [contract.NUM_RESULTS],
          keepdims=1),
    ]
    return nodes, index


def serve_ids(proto: onnx.ModelProto, kind: str, ids: ServedIds | None) -> None:
    """Rewires a converted dense-index graph in place (see the module docstring).

    With ``ids`` the graph speaks raw ids; with None it keeps dense indices and only
    gains ``num_results`` and finite scores.
    """
    graph = proto.graph
    nodes, index = _finish_outputs(graph)
    if ids is not None:
        users, items, compact = ids.users, ids.items, ids.compact
        front = []
        if contiguous_start(items) is None:  # the decoder's table; a compact lookup's too
            graph.initializer.append(_raw_table(items, _RAW_ITEMS))
        for name, vocabulary, lookup, what in zip(
                contract.INPUTS[kind], (users, items), compact, ("users", "items"), strict=True):
            encoded = f"{_PREFIX}index_{name}"
            _rename_uses(graph, name, encoded)
            front += _encoder(graph, name, encoded, vocabulary, lookup, what)
            _set_type(next(i for i in graph.input if i.name == name), onnx_id_type(
                id_kind(vocabulary)))
        nodes += _decoder(graph, index, items)
        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(front + existing + nodes)
        _set_type(next(o for o in graph.output if o.name == contract.TOP_ITEM_IDS),
                  onnx_id_type(id_kind(items)))
        if any(node.domain == ML_DOMAIN for node in graph.node) and not any(
                op.domain == ML_DOMAIN for op in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    else:
        nodes.append(helper.make_node("Identity", [index], [contract.TOP_ITEM_IDS]))
        graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(contract.NUM_RESULTS, TensorProto.INT64,
                                                      [_batch_dim(graph), 1]))
    _order_outputs(graph, kind)


def contiguous_start(vocabulary: Vocabulary) -> int | None:
    """``a`` when the raw ids are exactly ``a, a+1, ..., a+n-1`` (int ids), else None.

    Such a vocabulary (identity ids included) needs no table in the graph: raw - a is the
    index and index + a the raw id; an unknown id lands outside [0, n) (int64 wrap-around
    can only land there too), which the dense graph already treats as unknown.

    Example:
        >>> contiguous_start(Vocabulary([5, 6, 7])), contiguous_start(Vocabulary([5, 7]))
        (5, None)
    """
    if vocabulary.kind != "int" or not len(vocabulary):
        return None
    ids = np.fromiter(vocabulary.ids, dtype=np.int64, count=len(vocabulary))
    start = int(ids[0])
    if start > np.iinfo(np.int64).max - len(ids) + 1:
        return None
    expected = np.arange(start, start + len(ids), dtype=np.int64)
    return start if np.array_equal(ids, expected) else None


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    full = f"{_PREFIX}{name}"
    if not any(init.name == full for init in graph.initializer):
        graph.initializer.append(numpy_helper.from_array(value, full))
    return full


def _encoder(graph: onnx.GraphProto, raw: str, index: str, vocabulary: Vocabulary,
             lookup: CompactLookup | None, what: str) -> list[onnx.NodeProto]:
    if lookup is not None:
        table = _RAW_ITEMS
        if what == "users":
            table = f"{_PREFIX}raw_users"
            graph.initializer.append(_raw_table(vocabulary, table))
        return encoder_nodes(graph, raw, index, lookup, table, _PREFIX)
    start = contiguous_start(vocabulary)
    if start is None:
        return [_label_encoder(raw, index, vocabulary)]
    offset = _const(graph, f"start_{raw}", np.array(start, np.int64))
    return [helper.make_node("Sub", [raw, offset], [index], name=f"{_PREFIX}encode_{raw}")]


def _decoder(graph: onnx.GraphProto, index: str, items: Vocabulary) -> list[onnx.NodeProto]:
    start = contiguous_start(items)
    if start is None:
        return [helper.make_node("Gather", [_RAW_ITEMS, index], [contract.TOP_ITEM_IDS],
                                 axis=0)]
    offset = _const(graph, "start_items_out", np.array(start, np.int64))
    pad = _const(graph, "pad_int", np.array(contract.PAD_INT, np.int64))
    zero = _const(graph, "zero", np.array(0, np.int64))
    return [
        helper.make_node("Add", [index, offset], [f"{_PREFIX}raw_sum"]),
        helper.make_node("GreaterOrEqual", [index, zero], [f"{_PREFIX}is_item"]),
        helper.make_node("Where", [f"{_PREFIX}is_item", f"{_PREFIX}raw_sum", pad],
                         [contract.TOP_ITEM_IDS]),
    ]


def _batch_dim(graph: onnx.GraphProto) -> str | int:
    dim = graph.output[0].type.tensor_type.shape.dim[0]
    return dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else "batch")


def _order_outputs(graph: onnx.GraphProto, kind: str) -> None:
    by_name = {o.name: o for o in graph.output}
    ordered = [by_name[name] for name in contract.OUTPUTS[kind]]
    del graph.output[:]
    graph.output.extend(ordered)


class RawIdCodec:
    """Maps dense parity cases to raw-id feeds and raw answers back (export-time checks).

    An index outside the vocabulary becomes an id the vocabulary does not hold, so the
    parity cases for invalid indices exercise the graph's unknown-id path.

    Example:
        >>> codec = RawIdCodec(Vocabulary(["u0", "u1"]), Vocabulary([10, 20, 30]))
        >>> codec.encode_users(np.array([1, 5])).tolist()
        ['u1', 'kmr-unknown-user']
        >>> codec.decode_items(np.array([[30, contract.PAD_INT]])).tolist()
        [[2, -1]]
    """

    def __init__(self, users: Vocabulary, items: Vocabulary) -> None:
        self.users, self.items = users, items
        self._item_index = {raw: i for i, raw in enumerate(items.ids)}

    @staticmethod
    def _encode(vocabulary: Vocabulary, ids: np.ndarray, unknown: int | str) -> np.ndarray:
        flat = np.asarray(ids, np.int64).ravel()
        raw = [vocabulary.ids[i] if 0 <= i < len(vocabulary) else unknown for i in flat]
        dtype = object if vocabulary.kind == "str" else np.int64
        return np.array(raw, dtype=dtype).reshape(np.shape(ids))

    def _unknown(self, vocabulary: Vocabulary, what: str) -> int | str:
        if vocabulary.kind == "str":
            return f"kmr-unknown-{what}"
        return max(vocabulary.ids) + 1 if max(vocabulary.ids) < 2**63 - 1 else \
            min(vocabulary.ids) - 1

    def encode_users(self, ids: np.ndarray) -> np.ndarray:
        """Dense user indices -> raw ids (invalid -> an unknown id)."""
        return self._encode(self.users, ids, self._unknown(self.users, "user"))

    def encode_items(self, ids: np.ndarray) -> np.ndarray:
        """Dense item indices -> raw ids (invalid -> an unknown id; -1 padding too)."""
        return self._encode(self.items, ids, self._unknown(self.items, "item"))

    def decode_items(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids of an answer -> dense indices (the reserved padding id -> -1)."""
        flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in np.ravel(raw)]
        if self.items.kind == "int":
            flat = [int(v) for v in flat]
        out = [self._item_index.get(v, contract.INVALID_ID) for v in flat]
        return np.array(out, np.int64).reshape(np.shape(raw))
