"""Compressed exact retrieve graph: an int8 scoring pass, then an exact float32 re-score.

The item table is stored twice: scalar-quantised to int8 with one scale per dimension
(transposed, ``[D, padded]``, the operand of the scoring pass) and as float32 rows for
the re-score. Per request:

1. the user row (in scoring space, as the exact graph computes it) is multiplied by the
   per-dimension scales, divided by its largest magnitude (ranking within a row does not
   change, and a batch shares one quantisation range) and quantised by
   ``DynamicQuantizeLinear`` (uint8);
2. ``MatMulInteger`` (uint8 x int8 -> int32, onnxruntime's VNNI/AVX2 kernels) scores every
   item approximately, reading a quarter of the float32 table's bytes;
3. an exact two-stage pruning on those approximate scores (as in the exact graph: the
   best ``C + M + 1`` blocks of 64 ids by block maximum hold the ``C`` best
   non-excluded ids) keeps the ``C = k * rescore`` best candidates, exclusions and
   padding dropped;
4. the candidates are re-scored exactly in float32 (the trained similarity's arithmetic)
   and the top-k of those is returned.

So the answer is the exact float32 top-k whenever every true top-k item ranks within the
best ``k * rescore`` approximate scores, and its scores are always exact. The export
picks the default ``rescore`` as the smallest value whose answers equal exact top-k on
sampled users (`choose_rescore`) and checks the served graph against the exact
reference; a request may ask for another ``rescore`` (INT64 ``[B]``, ``<= 0``: the
default; clamped to ``[1, max_rescore]``, see `max_rescore`; each row keeps its own).

Inputs and outputs are the dense-index retrieve contract (`export.onnx.graphs`) plus
``rescore``; `export.onnx.raw_ids.serve_ids` adds raw ids and ``num_results``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(500, 8)).astype(np.float32)
    >>> users = rng.normal(size=(4, 8)).astype(np.float32)
    >>> table = quantize_items(items, "sqrt_dim")
    >>> import onnxruntime as ort
    >>> sess = ort.InferenceSession(int8_graph(table, users, k=5, rescore=4)
    ...                             .SerializeToString(), providers=["CPUExecutionProvider"])
    >>> ids, _ = sess.run(None, {"user_id": np.arange(4), "exclude_item_ids": np.full((1, 1), -1),
    ...                          "rescore": np.zeros(4, np.int64)})
    >>> bool((ids == exact_topk(users, items, np.arange(4), k=5,
    ...                         normalization="sqrt_dim")[0]).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx.block_graph import (
    PREFIX,
    RESCORE,
    common_constants,
    const,
    exclusion_nodes,
    model,
    node,
    output_nodes,
    per_row_setting,
    tail_nodes,
    user_nodes,
)
from export.onnx.ivf_index import exact_topk, scoring_items, scoring_users

__all__ = ["RESCORE", "QuantizedItems", "choose_rescore", "int8_graph", "int8_tables",
           "quantize_items"]

BLOCK = 64  # ids per block of the pruning stage
RESCORE_CHOICES = (1, 2, 4, 8, 16, 32)  # what `choose_rescore` tries, in order
_CHUNK = 1 << 18
_TABLES = tuple(f"{PREFIX}{n}" for n in ("user_table", "items_q_t", "items_f", "dim_scale"))


@dataclass(frozen=True)
class QuantizedItems:
    """An item table in the int8 graph's two layouts.

    Attributes:
        q_t: ``[D, padded]`` int8, ``round(x / dim_scale)``; pad columns 0.
        rows: ``[num_items, D]`` float32 scoring-space rows (the exact re-score).
        dim_scale: ``[D]`` float32 per-dimension scales (``max |x_d| / 127``).
        normalization: ``"sqrt_dim"`` or ``"cosine"``.
    """

    q_t: np.ndarray
    rows: np.ndarray
    dim_scale: np.ndarray
    normalization: str

    @property
    def num_items(self) -> int:
        return int(self.rows.shape[0])

    @property
    def padded(self) -> int:
        return int(self.q_t.shape[1])


def quantize_items(items: np.ndarray, normalization: str) -> QuantizedItems:
    """Quantises the trained item table (chunked: no float temporary of the whole table).

    Example:
        >>> table = quantize_items(np.array([[1.0, -2.0], [0.5, 2.0]], np.float32), "sqrt_dim")
        >>> table.q_t[:, :2].tolist(), table.padded
        ([[127, 64], [-127, 127]], 64)
    """
    rows = scoring_items(items, normalization)
    n, d = rows.shape
    peak = np.zeros(d, np.float32)
    for start in range(0, n, _CHUNK):
        peak = np.maximum(peak, np.abs(rows[start:start + _CHUNK]).max(axis=0))
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    padded = -(-(n + 1) // BLOCK) * BLOCK  # >= 1 pad column: one block may hold only pads
    q_t = np.zeros((d, padded), np.int8)
    for start in range(0, n, _CHUNK):
        chunk = np.rint(rows[start:start + _CHUNK] / scale)
        q_t[:, start:start + len(chunk)] = np.clip(chunk, -127, 127).astype(np.int8).T
    return QuantizedItems(q_t, rows, scale, normalization)


def _constants(table: QuantizedItems, num_users: int, k: int,
               rescore: int) -> list[onnx.TensorProto]:
    d = table.rows.shape[1]
    blocks = table.padded // BLOCK
    return common_constants(num_users, table.num_items, k, d) + [
        const("num_blocks", blocks, np.int64), const("nb_1d", [blocks], np.int64),
        const("block", BLOCK, np.int64), const("block_1d", [BLOCK], np.int64),
        const("slots", np.arange(BLOCK), np.int64), const("k", k, np.int64),
        const("num_items_1d", [table.num_items], np.int64),
        const("default_rescore", rescore, np.int64),
        const("max_rescore", max_rescore(table.num_items, k, d), np.int64),
    ]


def max_rescore(num_items: int, k: int, dim: int) -> int:
    """The largest ``rescore`` a request gets: ``k * rescore`` candidates of ``dim`` floats
    per row stay within the ``num_items`` scores the scoring pass holds per row, so no
    request costs more memory than the exact graph's ``[B, N]`` scores.

    Example:
        >>> max_rescore(1_000_000, 10, 64), max_rescore(7, 10, 4)
        (1562, 1)
    """
    return max(1, min(-(-num_items // k), num_items // (dim * k)))


def _approx_nodes() -> list[onnx.NodeProto]:
    """Quantised user rows, approximate int32 scores [B, padded], block maxima [B, nb]."""
    return [
        node("Mul", ["u", "dim_scale"], ["u_s"]),
        node("Abs", ["u_s"], ["u_abs"]),
        node("ReduceMax", ["u_abs"], ["u_peak"], axes=[1], keepdims=1),
        node("Max", ["u_peak", "eps"], ["u_den8"]),
        node("Div", ["u_s", "u_den8"], ["u_n"]),
        node("DynamicQuantizeLinear", ["u_n"], ["u_q", "u_q_scale", "u_q_zero"]),
        node("MatMulInteger", ["u_q", "items_q_t", "u_q_zero"], ["approx"]),
        node("Concat", ["b_1d", "nb_1d", "block_1d"], ["blocked_shape"], axis=0),
        node("Reshape", ["approx", "blocked_shape"], ["blocked"]),  # [B, nb, S]
        node("ReduceMax", ["blocked"], ["block_max"], axes=[2], keepdims=0),
    ]


def _prune_nodes() -> list[onnx.NodeProto]:
    """``c_rows`` [B] / ``c_1d`` candidates per row, the chosen blocks ``probe`` [B, p] and
    their approximate scores ``cand_masked`` and ids ``cand_ids`` [B, p*S] (pads: -inf/-1)."""
    return [
        *per_row_setting(RESCORE, "default_rescore", "max_rescore", "r"),
        node("Mul", ["r_rows", "k"], ["c_rows"]),
        node("Mul", ["r_1d", "k_1d"], ["c_wide"]),
        node("Min", ["c_wide", "num_items_1d"], ["c_1d"]),
        node("Shape", ["exclude_item_ids"], ["m_1d"], start=1, end=2),
        node("Add", ["c_1d", "m_1d"], ["w_cm"]),
        node("Add", ["w_cm", "one_1d"], ["w_all"]),  # + the block of the pad columns
        node("Min", ["w_all", "nb_1d"], ["p_1d"]),
        node("Squeeze", ["p_1d", "axis0"], ["p"]),
        node("TopK", ["block_max", "p_1d"], ["probe_max", "probe"], axis=1, largest=1,
             sorted=1),
        node("Unsqueeze", ["probe", "axis2"], ["probe3"]),  # [B, p, 1]
        node("GatherND", ["blocked", "probe3"], ["picked"], batch_dims=1),  # [B, p, S]
        node("Mul", ["p_1d", "block_1d"], ["rows_1d"]),
        node("Concat", ["b_1d", "rows_1d"], ["shape_b_rows"], axis=0),
        node("Reshape", ["picked", "shape_b_rows"], ["picked_flat"]),
        node("Cast", ["picked_flat"], ["cand_scores"], to=TensorProto.FLOAT),
        node("Mul", ["probe3", "block"], ["probe_base"]),
        node("Add", ["probe_base", "slots"], ["slot_ids"]),  # [B, p, S]
        node("Reshape", ["slot_ids", "shape_b_rows"], ["slot_ids_flat"]),
        node("GreaterOrEqual", ["slot_ids_flat", "num_items"], ["is_pad"]),
        node("Where", ["is_pad", "minus1", "slot_ids_flat"], ["cand_ids"]),
        node("Where", ["is_pad", "neg_inf", "cand_scores"], ["cand_masked"]),
        node("Range", ["zero", "p", "one"], ["ranks"]),
    ]


def _rescore_nodes() -> list[onnx.NodeProto]:
    """The best ``C`` approximate candidates of ``scored``, re-scored exactly in float32,
    each row keeping its own ``C``; -> ``final_scores`` / ``final_ids`` [B, C + k]."""
    return [
        node("TopK", ["scored", "c_1d"], ["c_approx", "c_pos"], axis=1, largest=1, sorted=1),
        node("GatherElements", ["all_ids", "c_pos"], ["c_ids"], axis=1),
        node("Squeeze", ["c_1d", "axis0"], ["c"]),
        node("Range", ["zero", "c", "one"], ["c_ranks"]),
        node("Unsqueeze", ["c_rows", "axis1"], ["c_col"]),
        node("Less", ["c_ranks", "c_col"], ["c_within"]),
        node("Greater", ["c_approx", "neg_inf"], ["c_real"]),
        node("And", ["c_within", "c_real"], ["c_ok"]),
        node("Where", ["c_ok", "c_ids", "zero"], ["c_safe"]),
        node("Gather", ["items_f", "c_safe"], ["c_vec"], axis=0),  # [B, C, D]
        node("Unsqueeze", ["u", "axis2"], ["u_col"]),
        node("MatMul", ["c_vec", "u_col"], ["c_exact3"]),
        node("Concat", ["b_1d", "c_1d"], ["c_shape"], axis=0),
        node("Reshape", ["c_exact3", "c_shape"], ["c_exact"]),
        node("Where", ["c_ok", "c_exact", "neg_inf"], ["r_scores"]),
        node("Where", ["c_ok", "c_ids", "minus1"], ["r_ids"]),
        node("Concat", ["r_scores", "tail_s"], ["final_scores"], axis=1),
        node("Concat", ["r_ids", "tail_i"], ["final_ids"], axis=1),
    ]


def int8_tables(table: QuantizedItems, user_table: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's tables by initializer name (`export.onnx.block_graph.save_with_tables`)."""
    values = (np.ascontiguousarray(user_table, np.float32), table.q_t,
              np.ascontiguousarray(table.rows), table.dim_scale)
    return dict(zip(_TABLES, values, strict=True))


def int8_graph(table: QuantizedItems, user_table: np.ndarray, *, k: int, rescore: int,
               tables: bool = True) -> onnx.ModelProto:
    """The compressed exact retrieve graph (see the module docstring).

    Args:
        table: `quantize_items` of the trained item table.
        user_table: ``[num_users, D]`` as trained.
        k: Results per row (> 0).
        rescore: The default re-score depth (candidates = ``k * rescore``).
        tables: Inline the tables; False leaves them out (`int8_tables` has them).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"Invalid value received for argument `k`. Expected a positive int. "
                         f"Received: k={k!r}")
    default = min(max(int(rescore), 1), max_rescore(table.num_items, k, table.rows.shape[1]))
    nodes = (user_nodes(table.normalization == "cosine") + _approx_nodes() + _prune_nodes()
             + tail_nodes("cand_masked", "cand_ids") + exclusion_nodes(located=False)
             + _rescore_nodes() + output_nodes("final_scores", "final_ids"))
    inits = _constants(table, int(user_table.shape[0]), k, default)
    if tables:
        inits += [numpy_helper.from_array(v, n) for n, v in int8_tables(table, user_table).items()]
    i64 = TensorProto.INT64
    inputs = [helper.make_tensor_value_info("user_id", i64, ["batch"]),
              helper.make_tensor_value_info("exclude_item_ids", i64,
                                            ["exclude_batch", "num_exclude"]),
              helper.make_tensor_value_info(RESCORE, i64, ["rescore_batch"])]
    doc = (f"kmr int8 retrieve graph, k={k}, num_items={table.num_items}, rescore={default}, "
           f"normalization={table.normalization}")
    return model(nodes, "kmr_int8_retrieve", inputs, k, inits, doc)


def approx_scores(table: QuantizedItems, user_rows: np.ndarray) -> np.ndarray:
    """The graph's approximate int32 scores of ``user_rows`` [B, D] (numpy, for choosing
    ``rescore``): same per-row scaling and uint8 quantisation as the graph."""
    u = scoring_users(user_rows, table.normalization) * table.dim_scale
    u = u / np.maximum(np.abs(u).max(axis=1, keepdims=True), np.float32(1e-12))
    lo, hi = min(0.0, float(u.min())), max(0.0, float(u.max()))
    scale = (hi - lo) / 255.0 or 1.0
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    q = (np.clip(np.rint(u / scale) + zero, 0, 255) - zero).astype(np.float32)
    # float32 BLAS is exact here: |sum| <= D * 255 * 127 < 2**24 for D <= 512
    out = np.empty((q.shape[0], table.num_items), np.int32)
    for start in range(0, table.num_items, _CHUNK):
        stop = min(start + _CHUNK, table.num_items)
        out[:, start:stop] = q @ table.q_t[:, start:stop].astype(np.float32)
    return out


def choose_rescore(table: QuantizedItems, user_table: np.ndarray, *, k: int,
                   sample: int = 256, seed: int = 0) -> tuple[int, float]:
    """Smallest `RESCORE_CHOICES` value whose answers equal exact top-k on sampled users.

    Returns ``(rescore, agreement)``: agreement is the fraction of sampled rows whose
    top-k ids equal the exact float32 top-k at that depth (1.0 unless even the largest
    choice misses, then that largest choice and its agreement).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> table = quantize_items(rng.normal(size=(2000, 16)).astype(np.float32), "sqrt_dim")
        >>> rescore, agreement = choose_rescore(table, rng.normal(size=(50, 16)), k=10)
        >>> rescore in RESCORE_CHOICES, agreement
        (True, 1.0)
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(user_table.shape[0], min(sample, user_table.shape[0]), replace=False)
    exact, _ = exact_topk(user_table, table.rows, users, k=k, normalization="sqrt_dim")
    approx = approx_scores(table, user_table[users])
    valid = exact >= 0
    # Depth a row needs: every item scoring >= its weakest exact item's approximate
    # score may come first (ties counted against us).
    weakest = np.where(valid, np.take_along_axis(approx, np.maximum(exact, 0), axis=1),
                       np.iinfo(np.int32).max).min(axis=1)
    needed = (approx >= weakest[:, None]).sum(axis=1)
    agreement = 0.0
    for rescore in RESCORE_CHOICES:
        depth = min(k * rescore, table.num_items)
        agreement = float(np.mean(needed <= depth))
        if agreement == 1.0 or depth == table.num_items:
            return rescore, agreement
    return RESCORE_CHOICES[-1], agreement
