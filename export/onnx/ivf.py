"""Approximate (IVF) retrieve graph: a plain ONNX graph (opset 17, standard ops only).

Same contract as the exact dense-index retrieve graph (`export.onnx.graphs`), so
`export.onnx.raw_ids.serve_ids(proto, "retrieve", users, items)` can add raw ids,
``num_results`` and finite scores to it:

* inputs ``user_id`` INT64 ``[B]`` (out of range -> an all -1 / -inf row),
  ``exclude_item_ids`` INT64 ``[B, M]`` (or ``[1, M]``, broadcast; -1 and out-of-range
  ids ignored) and ``nprobe`` INT64 ``[B]`` (or ``[1]``, broadcast): how many lists each
  row probes. A plain input, not an initializer: Triton's onnxruntime backend refuses
  optional inputs on a batching model, so a caller always sends it, and ``<= 0`` means
  the exported default. Larger values are clamped to ``num_lists`` (every list: exact).
  Rows of one batch may ask for different values: the batch probes the largest and
  each row ignores the lists beyond its own ``nprobe``, so a row's answer never depends
  on the other rows Triton batched it with.
* outputs ``top_item_ids`` INT64 ``[B, k]`` (-1 in empty slots), ``top_scores`` FP32
  ``[B, k]`` (-inf in empty slots).

The graph scores the user against the list centroids, keeps the ``nprobe`` best lists
(TopK), Gathers their padded blocks, scores them (one batched MatMul), masks padding
and exclusions (each valid exclusion is located through ``item_loc`` and the probe-rank
map, then scattered as -inf: O(B*M), never B*M*candidates) and returns the exact-score
top-k of what it scored. Ties go to the earlier probed position (higher-ranked list,
then lower item id). Index: `export.onnx.ivf_index`.

Size: all tables are initializers. `save_ivf` writes them inline when they total at
most ``external_threshold_bytes`` (default 64 MiB, as the exact export) and else as ONNX
external data (``model.onnx.data``, 4 KiB aligned, memory-mappable): no 2 GB limit.

Example:
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(64, 4)).astype(np.float32)
    >>> users = rng.normal(size=(3, 4)).astype(np.float32)
    >>> proto = build_ivf_retrieve(users, items, k=3, nlist=4, nprobe=4)
    >>> import onnxruntime as ort
    >>> sess = ort.InferenceSession(proto.SerializeToString(),
    ...                             providers=["CPUExecutionProvider"])
    >>> ids, _ = sess.run(None, {"user_id": np.array([0, 9]),
    ...                          "exclude_item_ids": np.full((2, 1), -1),
    ...                          "nprobe": np.array([0, 0])})
    >>> ids[1].tolist(), ids[0].tolist() == exact_topk(users, items, np.array([0]), k=3,
    ...     normalization="sqrt_dim")[0][0].tolist()
    ([-1, -1, -1], True)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx.ivf_index import (
    IvfIndex,
    build_index,
    choose_nprobe,
    default_nlist,
    exact_topk,
    ivf_reference,
    recall_at_k,
)
from kmr import contract

__all__ = ["NPROBE", "IvfIndex", "build_index", "build_ivf_retrieve", "choose_nprobe",
           "default_nlist", "exact_topk", "ivf_graph", "ivf_reference", "recall_at_k",
           "save_ivf"]

NPROBE = contract.NPROBE  # request input, INT64 [B]; <= 0: the exported default
OPSET = 17
IR_VERSION = 8  # opset 17's IR: loads in older Triton onnxruntime backends too
DEFAULT_EXTERNAL_THRESHOLD_BYTES = 64 << 20
_ALIGN = 4096
_P = "ivf_"
_TABLES = (f"{_P}user_table", f"{_P}centroids_t", f"{_P}blocks", f"{_P}block_ids",
           f"{_P}item_loc")


def _const(name: str, value: np.ndarray | float | int, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), f"{_P}{name}")


def _constants(index: IvfIndex, num_users: int, k: int,
               nprobe: int) -> list[onnx.TensorProto]:
    dim = index.blocks.shape[2]
    return [
        _const("zero", 0, np.int64), _const("one", 1, np.int64),
        _const("minus1", -1, np.int64), _const("one_1d", [1], np.int64),
        _const("num_users", num_users, np.int64), _const("num_items", index.num_items, np.int64),
        _const("num_lists", index.num_lists, np.int64),
        _const("default_nprobe", nprobe, np.int64),
        _const("block", index.block_size, np.int64), _const("k_1d", [k], np.int64),
        _const("neg_inf", -np.inf, np.float32), _const("eps", 1e-12, np.float32),
        _const("scale", 1.0 / math.sqrt(dim), np.float32),
        _const("d_1d", [dim], np.int64),
        _const("axis1", [1], np.int64), _const("axis2", [2], np.int64),
        _const("axis0", [0], np.int64), _const("block_1d", [index.block_size], np.int64),
    ]


_REQUEST_INPUTS = (contract.USER_ID, contract.EXCLUDE_ITEM_IDS, NPROBE)


def _n(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, [i if i in _REQUEST_INPUTS or not i
                                 else f"{_P}{i}" for i in inputs],
                            [o if o in (contract.TOP_ITEM_IDS, contract.TOP_SCORES)
                             else f"{_P}{o}" for o in outputs], **attrs)


def _user_nodes(cosine: bool) -> list[onnx.NodeProto]:
    """``user_id`` -> ``user_ok`` [B] and scoring-space rows ``u`` [B, D]."""
    nodes = [
        _n("Shape", ["user_id"], ["b_1d"]),
        _n("GreaterOrEqual", ["user_id", "zero"], ["u_ge"]),
        _n("Less", ["user_id", "num_users"], ["u_lt"]),
        _n("And", ["u_ge", "u_lt"], ["user_ok"]),
        _n("Where", ["user_ok", "user_id", "zero"], ["u_safe"]),
        _n("Gather", ["user_table", "u_safe"], ["u_rows"], axis=0),
    ]
    if cosine:  # the exact graph's formula: u / max(||u||, 1e-12)
        return nodes + [
            _n("Mul", ["u_rows", "u_rows"], ["u_sq"]),
            _n("ReduceSum", ["u_sq", "axis1"], ["u_ss"], keepdims=1),
            _n("Sqrt", ["u_ss"], ["u_norm"]),
            _n("Max", ["u_norm", "eps"], ["u_den"]),
            _n("Div", ["u_rows", "u_den"], ["u"]),
        ]
    return nodes + [_n("Mul", ["u_rows", "scale"], ["u"])]


def _probe_nodes() -> list[onnx.NodeProto]:
    """Centroid scores, each row's clamped nprobe ``p_rows`` [B], the batch's ``p``, probed
    lists ``probe`` [B, p] and their candidates' scores, lists beyond a row's own
    nprobe masked like padding."""
    return [
        _n("MatMul", ["u", "centroids_t"], ["c_scores"]),
        _n("LessOrEqual", ["nprobe", "zero"], ["p_unset"]),
        _n("Where", ["p_unset", "default_nprobe", "nprobe"], ["p_asked"]),
        _n("Min", ["p_asked", "num_lists"], ["p_hi"]),
        _n("Max", ["p_hi", "one"], ["p_clamped"]),
        _n("Expand", ["p_clamped", "b_1d"], ["p_rows"]),  # [B]
        _n("ReduceMax", ["p_rows"], ["p_max"], keepdims=1),  # [1]
        _n("Max", ["p_max", "one_1d"], ["p_1d"]),  # B = 0 -> 1
        _n("Squeeze", ["p_1d", "axis0"], ["p"]),
        # explicit shapes: a [0, -1] Reshape is ambiguous for an empty batch
        _n("Mul", ["p_1d", "block_1d"], ["rows_1d"]),
        _n("Concat", ["b_1d", "rows_1d"], ["shape_b_rows"], axis=0),
        _n("Concat", ["b_1d", "rows_1d", "d_1d"], ["shape_b_rows_d"], axis=0),
        _n("TopK", ["c_scores", "p_1d"], ["probe_scores", "probe"], axis=1, largest=1,
           sorted=1),
        _n("Gather", ["blocks", "probe"], ["g_blocks"], axis=0),  # [B, p, S, D]
        _n("Reshape", ["g_blocks", "shape_b_rows_d"], ["cand"]),  # [B, p*S, D]
        _n("Unsqueeze", ["u", "axis2"], ["u_col"]),  # [B, D, 1]
        _n("MatMul", ["cand", "u_col"], ["cand_scores3"]),
        _n("Reshape", ["cand_scores3", "shape_b_rows"], ["cand_scores"]),  # [B, p*S]
        _n("Gather", ["block_ids", "probe"], ["g_ids"], axis=0),
        _n("Reshape", ["g_ids", "shape_b_rows"], ["cand_ids"]),
        _n("Less", ["cand_ids", "zero"], ["is_pad"]),
        # rank r of row b is beyond that row's nprobe: r >= p_rows[b]
        _n("Range", ["zero", "p", "one"], ["ranks"]),
        _n("Unsqueeze", ["p_rows", "axis1"], ["p_col"]),  # [B, 1]
        _n("GreaterOrEqual", ["ranks", "p_col"], ["beyond"]),  # [B, p]
        _n("Unsqueeze", ["beyond", "axis2"], ["beyond3"]),
        _n("Concat", ["b_1d", "p_1d", "block_1d"], ["beyond_shape"], axis=0),
        _n("Expand", ["beyond3", "beyond_shape"], ["beyond_slots3"]),  # [B, p, S]
        _n("Reshape", ["beyond_slots3", "shape_b_rows"], ["beyond_slots"]),
        _n("Or", ["is_pad", "beyond_slots"], ["dropped"]),
        _n("Where", ["dropped", "neg_inf", "cand_scores"], ["cand_masked"]),
    ]


def _tail_nodes() -> list[onnx.NodeProto]:
    """k trailing (-inf, -1) columns: TopK never runs short, and a sink for exclusions."""
    return [
        _n("Concat", ["b_1d", "k_1d"], ["tail_shape"], axis=0),
        helper.make_node("ConstantOfShape", [f"{_P}tail_shape"], [f"{_P}tail_s"],
                         value=numpy_helper.from_array(np.array([-np.inf], np.float32))),
        helper.make_node("ConstantOfShape", [f"{_P}tail_shape"], [f"{_P}tail_i"],
                         value=numpy_helper.from_array(np.array([-1], np.int64))),
        _n("Concat", ["cand_masked", "tail_s"], ["all_scores"], axis=1),
        _n("Concat", ["cand_ids", "tail_i"], ["all_ids"], axis=1),
    ]


def _exclusion_nodes() -> list[onnx.NodeProto]:
    """Scatters -inf at each probed, valid exclusion's position (others hit the sink)."""
    return [
        _n("Concat", ["b_1d", "one_1d"], ["b_one"], axis=0),
        _n("Expand", ["exclude_item_ids", "b_one"], ["ex"]),  # [B, M]
        _n("GreaterOrEqual", ["ex", "zero"], ["ex_ge"]),
        _n("Less", ["ex", "num_items"], ["ex_lt"]),
        _n("And", ["ex_ge", "ex_lt"], ["ex_ok"]),
        _n("Where", ["ex_ok", "ex", "zero"], ["ex_safe"]),
        _n("Gather", ["item_loc", "ex_safe"], ["ex_loc"], axis=0),
        _n("Div", ["ex_loc", "block"], ["ex_list"]),
        _n("Mod", ["ex_loc", "block"], ["ex_slot"]),
        # rank_map[b, list] = probe rank of list (num_lists when not probed)
        _n("Unsqueeze", ["num_lists", "axis0"], ["num_lists_1d"]),
        _n("Concat", ["b_1d", "num_lists_1d"], ["rank_shape"], axis=0),
        _n("Expand", ["num_lists_1d", "rank_shape"], ["rank_init"]),
        _n("Unsqueeze", ["ranks", "axis0"], ["ranks_row"]),
        _n("Shape", ["probe"], ["shape_of_probe"]),
        _n("Expand", ["ranks_row", "shape_of_probe"], ["ranks_b"]),
        _n("ScatterElements", ["rank_init", "probe", "ranks_b"], ["rank_map"], axis=1),
        _n("GatherElements", ["rank_map", "ex_list"], ["ex_rank"], axis=1),
        _n("Less", ["ex_rank", "p"], ["ex_probed"]),
        _n("And", ["ex_probed", "ex_ok"], ["ex_hit"]),
        _n("Mul", ["ex_rank", "block"], ["ex_base"]),
        _n("Add", ["ex_base", "ex_slot"], ["ex_pos_hit"]),
        _n("Mul", ["p", "block"], ["sink"]),
        _n("Where", ["ex_hit", "ex_pos_hit", "sink"], ["ex_pos"]),
        _n("Shape", ["ex_pos"], ["ex_shape"]),
        helper.make_node("ConstantOfShape", [f"{_P}ex_shape"], [f"{_P}ex_inf"],
                         value=numpy_helper.from_array(np.array([-np.inf], np.float32))),
        _n("ScatterElements", ["all_scores", "ex_pos", "ex_inf"], ["scored"], axis=1),
    ]


def _output_nodes() -> list[onnx.NodeProto]:
    return [
        _n("TopK", ["scored", "k_1d"], ["top_raw", "top_pos"], axis=1, largest=1, sorted=1),
        _n("GatherElements", ["all_ids", "top_pos"], ["top_ids_raw"], axis=1),
        _n("Greater", ["top_raw", "neg_inf"], ["has_item"]),
        _n("Unsqueeze", ["user_ok", "axis1"], ["user_ok_col"]),
        _n("And", ["has_item", "user_ok_col"], ["found"]),
        _n("Where", ["found", "top_ids_raw", "minus1"], [contract.TOP_ITEM_IDS]),
        _n("Where", ["found", "top_raw", "neg_inf"], [contract.TOP_SCORES]),
    ]


def ivf_tables(index: IvfIndex, user_table: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's tables by initializer name (what `save_ivf` writes)."""
    values = (np.ascontiguousarray(user_table, np.float32),
              np.ascontiguousarray(index.centroids.T), index.blocks, index.block_ids,
              index.item_loc)
    return dict(zip(_TABLES, values, strict=True))


def ivf_graph(index: IvfIndex, user_table: np.ndarray, *, k: int, nprobe: int,
              tables: bool = True) -> onnx.ModelProto:
    """The IVF retrieve graph of ``index`` (see the module docstring).

    Args:
        index: The item index (`build_index`).
        user_table: ``[num_users, D]`` as trained.
        k: Results per row (> 0).
        nprobe: The exported default, used where a row's ``nprobe`` is <= 0 (stored
            clamped to ``[1, num_lists]``).
        tables: Inline the tables as initializers; False leaves them out (`save_ivf`
            adds them, inline or as external data).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> index = build_index(rng.normal(size=(40, 4)).astype(np.float32), nlist=4,
        ...                     normalization="cosine")
        >>> proto = ivf_graph(index, np.ones((2, 4), np.float32), k=2, nprobe=9)
        >>> onnx.checker.check_model(proto)
        >>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
        (['user_id', 'exclude_item_ids', 'nprobe'], ['top_item_ids', 'top_scores'])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"Invalid value received for argument `k`. Expected a positive int. "
                         f"Received: k={k!r}")
    default = min(max(int(nprobe), 1), index.num_lists)
    nodes = (_user_nodes(index.normalization == "cosine") + _probe_nodes() + _tail_nodes()
             + _exclusion_nodes() + _output_nodes())
    inits = _constants(index, int(user_table.shape[0]), k, default)
    if tables:
        inits += [numpy_helper.from_array(v, name)
                  for name, v in ivf_tables(index, user_table).items()]
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "kmr_ivf_retrieve",
        [helper.make_tensor_value_info(contract.USER_ID, i64, ["batch"]),
         helper.make_tensor_value_info(contract.EXCLUDE_ITEM_IDS, i64, ["exclude_batch",
                                                                         "num_exclude"]),
         helper.make_tensor_value_info(NPROBE, i64, ["nprobe_batch"])],
        [helper.make_tensor_value_info(contract.TOP_ITEM_IDS, i64, ["batch", k]),
         helper.make_tensor_value_info(contract.TOP_SCORES, f32, ["batch", k])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kmr-export", ir_version=IR_VERSION)
    proto.doc_string = (f"kmr ivf retrieve graph, k={k}, nlist={index.nlist}, "
                        f"num_lists={index.num_lists}, block_size={index.block_size}, "
                        f"nprobe={default}, normalization={index.normalization}")
    return proto


def _external(name: str, value: np.ndarray, offset: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
    tensor.dims.extend(value.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", contract.ONNX_WEIGHTS_FILE), ("offset", str(offset)),
                     ("length", str(value.nbytes))):
        tensor.external_data.add(key=key, value=val)
    return tensor


def save_ivf(proto: onnx.ModelProto, tables: dict[str, np.ndarray],
             out_dir: str | os.PathLike[str], *,
             external_threshold_bytes: int = DEFAULT_EXTERNAL_THRESHOLD_BYTES) -> list[Path]:
    """Adds ``tables`` to a ``tables=False`` graph and writes ``out_dir/model.onnx``.

    Tables totalling more than the threshold go to ``model.onnx.data`` (4 KiB aligned,
    written straight from the arrays), else inline. Returns the files written.

    Example:
        >>> import tempfile
        >>> rng = np.random.default_rng(0)
        >>> index = build_index(rng.normal(size=(40, 4)).astype(np.float32), nlist=4,
        ...                     normalization="sqrt_dim")
        >>> users = np.ones((2, 4), np.float32)
        >>> proto = ivf_graph(index, users, k=2, nprobe=2, tables=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     files = save_ivf(proto, ivf_tables(index, users), d, external_threshold_bytes=0)
        ...     onnx.checker.check_model(str(files[0]))
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


def build_ivf_retrieve(user_table: np.ndarray, item_table: np.ndarray, *, k: int,
                       nlist: int | None = None, nprobe: int | None = None,
                       normalization: str = "sqrt_dim", target_recall: float = 0.95,
                       seed: int = 0, tables: bool = True) -> onnx.ModelProto:
    """Clusters the items and builds the IVF retrieve graph (inline tables).

    Args:
        user_table: ``[num_users, D]`` as trained.
        item_table: ``[num_items, D]`` as trained.
        k: Results per row.
        nlist: k-means clusters (default `default_nlist`, ~4 sqrt(N)).
        nprobe: Default probed lists (default: `choose_nprobe` at ``target_recall`` on
            256 sampled users against exact numpy top-k).
        normalization: ``"sqrt_dim"`` or ``"cosine"`` (the similarity layer's).
        target_recall: Recall@k the default nprobe must reach on the sample.
        seed: k-means and sample seed.
        tables: False: leave the tables out (large models: `save_ivf` them); rebuild
            the index with `build_index` and the same seed to get them.

    The chosen values are in ``proto.metadata_props`` (``nlist``, ``num_lists``,
    ``nprobe``, ``block_size``, ``sample_recall``).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> proto = build_ivf_retrieve(rng.normal(size=(5, 4)).astype(np.float32),
        ...     rng.normal(size=(300, 4)).astype(np.float32), k=5, nlist=6)
        >>> sorted(p.key for p in proto.metadata_props)
        ['block_size', 'nlist', 'nprobe', 'num_lists', 'sample_recall']
    """
    index = build_index(item_table, nlist=nlist or default_nlist(len(item_table)),
                        normalization=normalization, seed=seed)
    if nprobe is None:
        nprobe = choose_nprobe(index, user_table, item_table, k=k,
                               target_recall=target_recall, seed=seed)
    proto = ivf_graph(index, user_table, k=k, nprobe=nprobe, tables=tables)
    sample = sample_recall(index, user_table, item_table, k=k, nprobe=nprobe, seed=seed)
    facts = {"nlist": index.nlist, "num_lists": index.num_lists, "nprobe": nprobe,
             "block_size": index.block_size, "sample_recall": round(sample, 4)}
    helper.set_model_props(proto, {key: str(value) for key, value in facts.items()})
    return proto


def sample_recall(index: IvfIndex, user_table: np.ndarray, item_table: np.ndarray, *, k: int,
                  nprobe: int, sample: int = 256, seed: int = 0) -> float:
    """Recall@k of `ivf_reference` vs `exact_topk` on ``sample`` seeded users (no exclusions).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> items = rng.normal(size=(100, 4)).astype(np.float32)
        >>> index = build_index(items, nlist=4, normalization="sqrt_dim")
        >>> sample_recall(index, items[:9], items, k=3, nprobe=index.num_lists)
        1.0
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(user_table.shape[0], min(sample, user_table.shape[0]), replace=False)
    found, _ = ivf_reference(index, user_table, users, np.full((users.size, 1), -1), k=k,
                             nprobe=nprobe)
    exact, _ = exact_topk(user_table, item_table, users, k=k, normalization=index.normalization)
    return recall_at_k(found, exact)
