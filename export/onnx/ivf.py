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
  each row ignores the lists beyond its own ``nprobe``, so a row's ids never depend on
  the other rows Triton batched it with (its scores only up to float rounding, see
  below).
* outputs ``top_item_ids`` INT64 ``[B, k]`` (-1 in empty slots), ``top_scores`` FP32
  ``[B, k]`` (-inf in empty slots).

The graph scores the user against the list centroids, keeps the ``nprobe`` best lists
(TopK), Gathers their padded blocks, scores them (one batched MatMul; when
``2 * B * nprobe * D > num_lists * (D + B)`` it instead scores every slot once for the
whole batch with one GEMM and picks the probed ones, which moves fewer bytes there and
keeps a request with a huge ``nprobe`` from copying the table once per row), masks padding
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx.block_graph import (
    DEFAULT_EXTERNAL_THRESHOLD_BYTES,
    PREFIX,
    common_constants,
    const,
    exclusion_nodes,
    model,
    node,
    output_nodes,
    per_row_setting,
    save_with_tables,
    tail_nodes,
    user_nodes,
)
from export.onnx.ivf_index import (
    IndexSettings,
    IvfIndex,
    build_index,
    choose_nprobe,
    default_nlist,
    exact_topk,
    ivf_reference,
    recall_at_k,
)
from kmr import contract

__all__ = ["DEFAULT_EXTERNAL_THRESHOLD_BYTES", "NPROBE", "IvfIndex", "build_index",
           "build_ivf_retrieve", "choose_nprobe", "default_nlist", "exact_topk", "ivf_graph",
           "ivf_reference", "plan_ivf", "recall_at_k", "save_ivf"]

NPROBE = contract.NPROBE  # request input, INT64 [B]; <= 0: the exported default
_TABLES = tuple(f"{PREFIX}{name}" for name in ("user_table", "centroids_t", "blocks",
                                                "block_ids", "item_loc"))
save_ivf = save_with_tables  # the IVF graph's tables are plain initializers


def _constants(index: IvfIndex, num_users: int, k: int,
               nprobe: int) -> list[onnx.TensorProto]:
    dim = index.blocks.shape[2]
    return common_constants(num_users, index.num_items, k, dim) + [
        const("num_blocks", index.num_lists, np.int64),
        const("default_nprobe", nprobe, np.int64),
        const("block", index.block_size, np.int64),
        const("block_1d", [index.block_size], np.int64),
        const("slots", np.arange(index.block_size), np.int64), const("d", dim, np.int64),
        const("two_d", 2 * dim, np.int64),
    ]


def _probe_nodes() -> list[onnx.NodeProto]:
    """Centroid scores, each row's clamped nprobe ``p_rows`` [B], the batch's ``p``, probed
    lists ``probe`` [B, p] and their candidates' scores, lists beyond a row's own
    nprobe masked like padding."""
    return [
        node("MatMul", ["u", "centroids_t"], ["c_scores"]),
        *per_row_setting("nprobe", "default_nprobe", "num_blocks", "p"),
        node("Squeeze", ["p_1d", "axis0"], ["p"]),
        # explicit shapes: a [0, -1] Reshape is ambiguous for an empty batch
        node("Mul", ["p_1d", "block_1d"], ["rows_1d"]),
        node("Concat", ["b_1d", "rows_1d"], ["shape_b_rows"], axis=0),
        node("TopK", ["c_scores", "p_1d"], ["probe_scores", "probe"], axis=1, largest=1,
             sorted=1),
        # the probed lists' slots: rows of the flat [num_lists * S, D] table
        node("Unsqueeze", ["probe", "axis2"], ["probe3"]),
        node("Mul", ["probe3", "block"], ["probe_base"]),
        node("Add", ["probe_base", "slots"], ["slot_rows3"]),  # [B, p, S]
        node("Reshape", ["slot_rows3", "shape_b_rows"], ["slot_rows"]),  # [B, p*S]
        # Memory traffic, in units of S floats: gathering copies B*p*D twice (read and
        # write); scoring every slot once reads the table (L*D) and writes B*L scores.
        # Past 2*B*p*D > L*(D + B) the second is cheaper, and it keeps a request with a
        # huge nprobe from copying the table once per row (memory: at most about half
        # the table plus the batch's [B, L*S] scores).
        node("Squeeze", ["b_1d", "axis0"], ["b"]),
        node("Mul", ["b", "p"], ["bp"]),
        node("Mul", ["bp", "two_d"], ["gather_cost"]),
        node("Add", ["b", "d"], ["d_plus_b"]),
        node("Mul", ["d_plus_b", "num_blocks"], ["score_all_cost"]),
        node("Greater", ["gather_cost", "score_all_cost"], ["score_all"]),
        helper.make_node("If", [f"{PREFIX}score_all"], [f"{PREFIX}cand_scores"],
                         then_branch=_score_all_branch(), else_branch=_gather_branch()),
        node("Gather", ["block_ids", "probe"], ["g_ids"], axis=0),
        node("Reshape", ["g_ids", "shape_b_rows"], ["cand_ids"]),
        node("Less", ["cand_ids", "zero"], ["is_pad"]),
        # rank r of row b is beyond that row's nprobe: r >= p_rows[b]
        node("Range", ["zero", "p", "one"], ["ranks"]),
        node("Unsqueeze", ["p_rows", "axis1"], ["p_col"]),  # [B, 1]
        node("GreaterOrEqual", ["ranks", "p_col"], ["beyond"]),  # [B, p]
        node("Unsqueeze", ["beyond", "axis2"], ["beyond3"]),
        node("Concat", ["b_1d", "p_1d", "block_1d"], ["beyond_shape"], axis=0),
        node("Expand", ["beyond3", "beyond_shape"], ["beyond_slots3"]),  # [B, p, S]
        node("Reshape", ["beyond_slots3", "shape_b_rows"], ["beyond_slots"]),
        node("Or", ["is_pad", "beyond_slots"], ["dropped"]),
        node("Where", ["dropped", "neg_inf", "cand_scores"], ["cand_masked"]),
    ]


def _branch(name: str, nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(f"{PREFIX}cand_scores", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [out])


def _gather_branch() -> onnx.GraphProto:
    """Few lists: gather their vectors per row and score them [B, p*S]."""
    return _branch("gather_probed", [
        node("Gather", ["blocks", "slot_rows"], ["cand"], axis=0),  # [B, p*S, D]
        node("Unsqueeze", ["u", "axis2"], ["u_col"]),  # [B, D, 1]
        node("MatMul", ["cand", "u_col"], ["cand_scores3"]),
        node("Reshape", ["cand_scores3", "shape_b_rows"], ["cand_scores"]),
    ])


def _score_all_branch() -> onnx.GraphProto:
    """Many lists: score every slot once for the batch, then pick the probed [B, p*S]."""
    return _branch("score_all_lists", [
        # The table is MatMul's A operand: onnxruntime pre-packs a constant B operand,
        # which would keep a second copy of the table (+900 MB at 1M x 64, measured).
        # (A gather along axis 0 of [L*S, B] would be one cache miss per element.)
        node("Transpose", ["u"], ["u_t"], perm=[1, 0]),  # [D, B]
        node("MatMul", ["blocks", "u_t"], ["all_t"]),  # [num_lists * S, B]
        node("Transpose", ["all_t"], ["all_slots"], perm=[1, 0]),  # [B, num_lists * S]
        node("GatherElements", ["all_slots", "slot_rows"], ["cand_scores"], axis=1),
    ])


def ivf_tables(index: IvfIndex, user_table: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's tables by initializer name (what `save_ivf` writes)."""
    flat = index.blocks.reshape(-1, index.blocks.shape[2])  # [num_lists * S, D], a view
    values = (np.ascontiguousarray(user_table, np.float32),
              np.ascontiguousarray(index.centroids.T), flat, index.block_ids, index.item_loc)
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
    nodes = (user_nodes(index.normalization == "cosine") + _probe_nodes()
             + tail_nodes("cand_masked", "cand_ids") + exclusion_nodes(located=True)
             + output_nodes("scored", "all_ids"))
    inits = _constants(index, int(user_table.shape[0]), k, default)
    if tables:
        inits += [numpy_helper.from_array(v, name)
                  for name, v in ivf_tables(index, user_table).items()]
    i64 = TensorProto.INT64
    inputs = [helper.make_tensor_value_info(contract.USER_ID, i64, ["batch"]),
              helper.make_tensor_value_info(contract.EXCLUDE_ITEM_IDS, i64,
                                            ["exclude_batch", "num_exclude"]),
              helper.make_tensor_value_info(NPROBE, i64, ["nprobe_batch"])]
    doc = (f"kmr ivf retrieve graph, k={k}, nlist={index.nlist}, "
           f"num_lists={index.num_lists}, block_size={index.block_size}, "
           f"nprobe={default}, normalization={index.normalization}")
    return model(nodes, "kmr_ivf_retrieve", inputs, k, inits, doc)


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
    index, nprobe, sample = plan_ivf(user_table, item_table, k=k, normalization=normalization,
                                     settings=IndexSettings(nlist=nlist, nprobe=nprobe,
                                                            target_recall=target_recall,
                                                            seed=seed))
    proto = ivf_graph(index, user_table, k=k, nprobe=nprobe, tables=tables)
    facts = {"nlist": index.nlist, "num_lists": index.num_lists, "nprobe": nprobe,
             "block_size": index.block_size, "sample_recall": round(sample, 4)}
    helper.set_model_props(proto, {key: str(value) for key, value in facts.items()})
    return proto


def plan_ivf(user_table: np.ndarray, item_table: np.ndarray, *, k: int, normalization: str,
             settings: IndexSettings) -> tuple[IvfIndex, int, float]:
    """The index, its default nprobe and that nprobe's recall@k on sampled users.

    ``settings.nlist`` defaults to `default_nlist`; ``settings.nprobe`` to the smallest
    reaching ``settings.target_recall`` (`choose_nprobe`), clamped to the list count.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> items = rng.normal(size=(300, 4)).astype(np.float32)
        >>> index, nprobe, recall = plan_ivf(items[:20], items, k=5, normalization="sqrt_dim",
        ...                                  settings=IndexSettings(nlist=6))
        >>> 1 <= nprobe <= index.num_lists, recall >= 0.95
        (True, True)
    """
    index = build_index(item_table, nlist=settings.nlist or default_nlist(len(item_table)),
                        normalization=normalization, seed=settings.seed)
    nprobe = min(settings.nprobe or choose_nprobe(
        index, user_table, item_table, k=k, target_recall=settings.target_recall,
        seed=settings.seed), index.num_lists)
    recall = sample_recall(index, user_table, item_table, k=k, nprobe=nprobe,
                           seed=settings.seed)
    return index, nprobe, recall


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
