"""Pieces shared by the block-structured retrieve graphs (IVF, int8), written as plain ONNX.

Both graphs pick a few *blocks* of items per row (IVF: the lists whose centroids score
best; int8: the id ranges whose quantised maxima are best), score what is in them, drop
padding and exclusions, and take a top-k. This module holds what they share: node and
constant naming, the user lookup, the exclusion scatter, the tail that keeps TopK from
running short, the output stage, and writing the tables inline or as external data.

Names: every internal tensor is ``blk_<name>``; request inputs and the contract outputs
keep their names (`node` does the prefixing).

Example:
    >>> [n.op_type for n in user_nodes(cosine=False)][:3]
    ['Shape', 'GreaterOrEqual', 'Less']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kmr import contract

OPSET = 17
IR_VERSION = 8  # opset 17's IR: loads in older Triton onnxruntime backends too
DEFAULT_EXTERNAL_THRESHOLD_BYTES = 64 << 20
PREFIX = "blk_"
RESCORE = contract.RESCORE  # int8 graph request input
_ALIGN = 4096
_REQUEST_INPUTS = (contract.USER_ID, contract.EXCLUDE_ITEM_IDS, contract.NPROBE, RESCORE)
_OUTPUTS = (contract.TOP_ITEM_IDS, contract.TOP_SCORES)


def const(name: str, value: np.ndarray | float | int, dtype: type) -> onnx.TensorProto:
    """An initializer ``blk_<name>`` holding ``value`` as ``dtype``."""
    return numpy_helper.from_array(np.asarray(value, dtype), f"{PREFIX}{name}")


def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    """A node whose internal tensor names get the prefix (request inputs/outputs do not)."""
    return helper.make_node(op, [i if i in _REQUEST_INPUTS or not i
                                 else f"{PREFIX}{i}" for i in inputs],
                            [o if o in _OUTPUTS else f"{PREFIX}{o}" for o in outputs], **attrs)


def fill(name: str, shape: str, value: float | int, dtype: type) -> onnx.NodeProto:
    """``ConstantOfShape``: ``blk_<name>`` of shape ``blk_<shape>`` filled with ``value``."""
    return helper.make_node("ConstantOfShape", [f"{PREFIX}{shape}"], [f"{PREFIX}{name}"],
                            value=numpy_helper.from_array(np.array([value], dtype)))


def common_constants(num_users: int, num_items: int, k: int,
                     dim: int) -> list[onnx.TensorProto]:
    """The scalars and axes every block graph uses."""
    return [
        const("zero", 0, np.int64), const("one", 1, np.int64), const("minus1", -1, np.int64),
        const("one_1d", [1], np.int64), const("num_users", num_users, np.int64),
        const("num_items", num_items, np.int64), const("k_1d", [k], np.int64),
        const("neg_inf", -np.inf, np.float32), const("eps", 1e-12, np.float32),
        const("scale", 1.0 / np.sqrt(dim), np.float32), const("d_1d", [dim], np.int64),
        const("axis0", [0], np.int64), const("axis1", [1], np.int64),
        const("axis2", [2], np.int64),
    ]


def user_nodes(cosine: bool) -> list[onnx.NodeProto]:
    """``user_id`` -> ``b_1d`` (batch), ``user_ok`` [B] and scoring-space rows ``u`` [B, D]."""
    nodes = [
        node("Shape", ["user_id"], ["b_1d"]),
        node("GreaterOrEqual", ["user_id", "zero"], ["u_ge"]),
        node("Less", ["user_id", "num_users"], ["u_lt"]),
        node("And", ["u_ge", "u_lt"], ["user_ok"]),
        node("Where", ["user_ok", "user_id", "zero"], ["u_safe"]),
        node("Gather", ["user_table", "u_safe"], ["u_rows"], axis=0),
    ]
    if cosine:  # the exact graph's formula: u / max(||u||, 1e-12)
        return nodes + [
            node("Mul", ["u_rows", "u_rows"], ["u_sq"]),
            node("ReduceSum", ["u_sq", "axis1"], ["u_ss"], keepdims=1),
            node("Sqrt", ["u_ss"], ["u_norm"]),
            node("Max", ["u_norm", "eps"], ["u_den"]),
            node("Div", ["u_rows", "u_den"], ["u"]),
        ]
    return nodes + [node("Mul", ["u_rows", "scale"], ["u"])]


def per_row_setting(name: str, default: str, upper: str, out: str) -> list[onnx.NodeProto]:
    """A per-row request setting ``name`` [B] (or [1]): ``<= 0`` -> ``default``, then
    clamped to ``[1, upper]``; gives ``<out>_rows`` [B] and the batch's largest ``<out>_1d``.
    """
    return [
        node("LessOrEqual", [name, "zero"], [f"{out}_unset"]),
        node("Where", [f"{out}_unset", default, name], [f"{out}_asked"]),
        node("Min", [f"{out}_asked", upper], [f"{out}_hi"]),
        node("Max", [f"{out}_hi", "one"], [f"{out}_clamped"]),
        node("Expand", [f"{out}_clamped", "b_1d"], [f"{out}_rows"]),
        node("ReduceMax", [f"{out}_rows"], [f"{out}_max"], keepdims=1),
        node("Max", [f"{out}_max", "one_1d"], [f"{out}_1d"]),  # B = 0 -> 1
    ]


def tail_nodes(scores: str, ids: str) -> list[onnx.NodeProto]:
    """``all_scores`` / ``all_ids``: ``scores`` / ``ids`` [B, n] plus k (-inf, -1) columns,
    so TopK never runs short and exclusions outside the scored blocks have a sink."""
    return [
        node("Concat", ["b_1d", "k_1d"], ["tail_shape"], axis=0),
        fill("tail_s", "tail_shape", -np.inf, np.float32),
        fill("tail_i", "tail_shape", -1, np.int64),
        node("Concat", [scores, "tail_s"], ["all_scores"], axis=1),
        node("Concat", [ids, "tail_i"], ["all_ids"], axis=1),
    ]


def exclusion_nodes(*, located: bool) -> list[onnx.NodeProto]:
    """Scatters -inf into ``all_scores`` at each scored, valid exclusion -> ``scored``.

    Needs ``probe`` [B, p] (the chosen blocks, best first), ``p`` (their count),
    ``ranks`` (0..p-1), ``num_blocks``, ``block`` (slots per block) and, when not
    ``located`` (an item's block slot is its id), ``item_loc`` [num_items]. Cost O(B*M).
    """
    loc = [node("Gather", ["item_loc", "ex_safe"], ["ex_loc"], axis=0)] if located else [
        node("Identity", ["ex_safe"], ["ex_loc"])]
    return [
        node("Concat", ["b_1d", "one_1d"], ["b_one"], axis=0),
        node("Expand", ["exclude_item_ids", "b_one"], ["ex"]),  # [B, M]
        node("GreaterOrEqual", ["ex", "zero"], ["ex_ge"]),
        node("Less", ["ex", "num_items"], ["ex_lt"]),
        node("And", ["ex_ge", "ex_lt"], ["ex_ok"]),
        node("Where", ["ex_ok", "ex", "zero"], ["ex_safe"]),
        *loc,
        node("Div", ["ex_loc", "block"], ["ex_block"]),
        node("Mod", ["ex_loc", "block"], ["ex_slot"]),
        # rank_map[b, block] = rank of the block among the chosen (num_blocks if not chosen)
        node("Unsqueeze", ["num_blocks", "axis0"], ["num_blocks_1d"]),
        node("Concat", ["b_1d", "num_blocks_1d"], ["rank_shape"], axis=0),
        node("Expand", ["num_blocks_1d", "rank_shape"], ["rank_init"]),
        node("Unsqueeze", ["ranks", "axis0"], ["ranks_row"]),
        node("Shape", ["probe"], ["shape_of_probe"]),
        node("Expand", ["ranks_row", "shape_of_probe"], ["ranks_b"]),
        node("ScatterElements", ["rank_init", "probe", "ranks_b"], ["rank_map"], axis=1),
        node("GatherElements", ["rank_map", "ex_block"], ["ex_rank"], axis=1),
        node("Less", ["ex_rank", "p"], ["ex_probed"]),
        node("And", ["ex_probed", "ex_ok"], ["ex_hit"]),
        node("Mul", ["ex_rank", "block"], ["ex_base"]),
        node("Add", ["ex_base", "ex_slot"], ["ex_pos_hit"]),
        node("Mul", ["p", "block"], ["sink"]),
        node("Where", ["ex_hit", "ex_pos_hit", "sink"], ["ex_pos"]),
        node("Shape", ["ex_pos"], ["ex_shape"]),
        fill("ex_inf", "ex_shape", -np.inf, np.float32),
        node("ScatterElements", ["all_scores", "ex_pos", "ex_inf"], ["scored"], axis=1),
    ]


def output_nodes(scores: str, ids: str) -> list[onnx.NodeProto]:
    """The contract outputs: top-k of ``scores`` [B, n >= k] with ids from ``ids``."""
    return [
        node("TopK", [scores, "k_1d"], ["top_raw", "top_pos"], axis=1, largest=1, sorted=1),
        node("GatherElements", [ids, "top_pos"], ["top_ids_raw"], axis=1),
        node("Greater", ["top_raw", "neg_inf"], ["has_item"]),
        node("Unsqueeze", ["user_ok", "axis1"], ["user_ok_col"]),
        node("And", ["has_item", "user_ok_col"], ["found"]),
        node("Where", ["found", "top_ids_raw", "minus1"], [contract.TOP_ITEM_IDS]),
        node("Where", ["found", "top_raw", "neg_inf"], [contract.TOP_SCORES]),
    ]


def _external(name: str, value: np.ndarray, offset: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
    tensor.dims.extend(value.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", contract.ONNX_WEIGHTS_FILE), ("offset", str(offset)),
                     ("length", str(value.nbytes))):
        tensor.external_data.add(key=key, value=val)
    return tensor


def save_with_tables(proto: onnx.ModelProto, tables: dict[str, np.ndarray],
                     out_dir: str | os.PathLike[str], *,
                     external_threshold_bytes: int = DEFAULT_EXTERNAL_THRESHOLD_BYTES
                     ) -> list[Path]:
    """Adds ``tables`` (initializers by name) to ``proto`` and writes ``out_dir/model.onnx``.

    Tables totalling more than the threshold go to ``model.onnx.data`` (4 KiB aligned,
    written straight from the arrays, memory-mappable, no 2 GB limit), else inline.
    Returns the files written.

    Example:
        >>> import tempfile
        >>> proto = model([node("Identity", ["user_id"], ["x"])], "g", [], 1, [], "")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     files = save_with_tables(proto, {"t": np.zeros(4, np.float32)}, d,
        ...                              external_threshold_bytes=0)
        ...     [f.name for f in files]
        ['model.onnx', 'model.onnx.data']
    """
    out_dir = Path(out_dir)
    files = [out_dir / contract.ONNX_FILE]
    if sum(v.nbytes for v in tables.values()) <= external_threshold_bytes:
        proto.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in tables.items())
    else:
        files.append(out_dir / contract.ONNX_WEIGHTS_FILE)
        offset = 0
        with open(files[1], "wb") as f:
            for name, value in tables.items():
                offset = -(-offset // _ALIGN) * _ALIGN
                f.seek(offset)
                f.write(memoryview(np.ascontiguousarray(value)).cast("B"))
                proto.graph.initializer.append(_external(name, value, offset))
                offset += value.nbytes
    files[0].write_bytes(proto.SerializeToString())
    return files


def _used_names(nodes: list[onnx.NodeProto]) -> set[str]:
    """Every tensor name the nodes (and the subgraphs of If nodes) read."""
    used: set[str] = set()
    for n in nodes:
        used.update(n.input)
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(list(attr.g.node))
    return used


def model(nodes: list[onnx.NodeProto], name: str, inputs: list[onnx.ValueInfoProto], k: int,
          initializers: list[onnx.TensorProto], doc: str) -> onnx.ModelProto:
    """The ModelProto of a block graph: contract outputs ``[B, k]``, opset 17, IR 8."""
    outputs = [
        helper.make_tensor_value_info(contract.TOP_ITEM_IDS, onnx.TensorProto.INT64,
                                      ["batch", k]),
        helper.make_tensor_value_info(contract.TOP_SCORES, onnx.TensorProto.FLOAT,
                                      ["batch", k])]
    used = _used_names(nodes)  # constants a variant does not use (e.g. eps) are dropped:
    initializers = [t for t in initializers if t.name in used]  # onnxruntime warns on them
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kmr-export", ir_version=IR_VERSION)
    proto.doc_string = doc
    return proto
