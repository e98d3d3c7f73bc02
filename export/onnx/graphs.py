"""The served graphs (``rerank`` and ``retrieve``) as TensorFlow functions of their tables.

Each graph is a `tf.function` whose embedding tables are function *inputs*, not
captured variables. The converter therefore never sees the weights (no 2 GB protobuf
limit, no 20-30x RAM blow-up); `export.onnx.weights` later turns those inputs into
initializers holding the real values. The tables are given in *serving layout*
(`TableSpec`): the retrieve item table is stored transposed, pre-normalised and padded
with zero columns to whole blocks (`padded_columns`), so the served graph is one MatMul
in the layout MatMul wants.

Output contract (shared by both graphs, see `kmr.contract`):

* Outputs are always ``[B, k]``; slots that hold no valid item carry id
  ``contract.INVALID_ID`` (-1), position -1 (rerank) and score ``-inf``.
* Ties go to the lower position (rerank) / lower item id (retrieve).
* An out-of-range user id (negative or ``>= num_users``, any int64 incl. +-2**62)
  gives a row of all -1 ids and ``-inf`` scores: that is how a client recognises it.
  It never wraps to another user's row and never fails the other rows of the batch.

``rerank``: ``user_id`` INT64 ``[B]``, ``item_ids`` INT64 ``[B, N]`` ->
``top_item_ids`` INT64, ``top_positions`` INT64, ``top_scores`` FP32, each ``[B, k]``.
An out-of-range candidate scores ``-inf``, so it can only fill padding slots (as -1).
``N < k`` pads the tail. Scores are exactly the trained model's similarity layer
(incl. its normalization) on the looked-up rows. ``N = 0`` is valid in the TF graph
(all-padding rows); onnxruntime may reject it at a Reshape, and the python backend
rejects ``N = 0`` per request before it reaches the graph.

``retrieve``: ``user_id`` INT64 ``[B]``, ``exclude_item_ids`` INT64 ``[B, M]`` ->
``top_item_ids`` INT64, ``top_scores`` FP32, each ``[B, k]``, over the whole item table.
Exclusion ids equal to -1 (padding) or out of range are ignored; an excluded item
scores ``-inf``. Top-k is exact and two-stage, so nothing of size ``[B, N]`` is copied
after the MatMul: block maxima (``retrieve_block_size`` items per block) pick the
``k + M + pads`` best blocks, exclusions are scattered as ``-inf`` into those gathered
blocks only, and the final TopK runs over them (blocks in ascending id order, so ties
still go to the lower item id). Nothing of size ``B x M x N`` is ever built.

Example:
    >>> from kmr.models import build_recommender
    >>> model = build_recommender(num_users=4, num_items=6, embedding_dim=2, k=3)
    >>> graph = serving_graph(model, "rerank", k=3)
    >>> import numpy as np
    >>> out = graph.run_tf({"user_id": np.array([0, 9]),
    ...                     "item_ids": np.array([[1, 2], [1, 2]])})
    >>> out["top_item_ids"][1].tolist(), out["top_positions"].shape
    ([-1, -1, -1], (2, 3))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmr import contract
from kmr.models import recommender_parts

USER_TABLE = "kmr_user_table"
ITEM_TABLE = "kmr_item_table"
ITEM_TABLE_T = "kmr_item_table_t"  # retrieve: [D, padded_columns(N)], the MatMul's B operand

_CHUNK_ROWS = 1 << 18  # rows per streamed chunk: 64 MB of a D=64 float32 table
_LARGE_BLOCK = 64  # retrieve: items per block of the two-stage top-k (large catalogues)
_SMALL_BLOCK = 8  # ... and for catalogues below _LARGE_BLOCK ** 2 items


def retrieve_block_size(num_items: int) -> int:
    """Items per block of the retrieve graph's two-stage top-k."""
    return _LARGE_BLOCK if num_items + 1 >= _LARGE_BLOCK**2 else _SMALL_BLOCK


def padded_columns(num_items: int) -> int:
    """Columns of the stored retrieve item table: ``num_items`` + >= 1 zero pad columns,
    rounded up to a whole number of blocks.

    Example:
        >>> padded_columns(5), padded_columns(1_000_000)
        (8, 1000064)
    """
    block = retrieve_block_size(num_items)
    return -(-(num_items + 1) // block) * block


@dataclass(frozen=True)
class TableSpec:
    """One embedding table in serving layout, produced chunk by chunk.

    Attributes:
        name: Graph input name that becomes the initializer.
        shape: Shape of the served tensor (float32, row-major).
        chunks: Callable yielding ``(byte_offset, bytes_like)`` pieces that together
            cover the tensor's raw little-endian float32 bytes exactly once.
    """

    name: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[tuple[int, memoryview]]]

    @property
    def nbytes(self) -> int:
        """Size of the served tensor in bytes."""
        return 4 * math.prod(self.shape)

    def to_numpy(self) -> np.ndarray:
        """Materialises the tensor (small tables and tests only)."""
        out = np.empty(self.nbytes, np.uint8)
        for offset, piece in self.chunks():
            data = np.frombuffer(piece, np.uint8)
            out[offset : offset + data.size] = data
        return out.view(np.float32).reshape(self.shape)


@dataclass(frozen=True)
class RecommenderWeights:
    """What the served graphs need from a trained model: its tables and similarity layer.

    Holding these (one numpy copy of each table) instead of the Keras model lets the
    export drop the model's TF variables early, so a 10M-item export keeps one copy of
    the weights in memory, not two.

    Attributes:
        users: User table ``[num_users, D]`` float32.
        items: Item table ``[num_items, D]`` float32.
        similarity: The trained `NormalizedDotProductSimilarity` layer (stateless).
    """

    users: np.ndarray
    items: np.ndarray
    similarity: keras.layers.Layer

    @classmethod
    def from_model(cls, model: keras.Model) -> RecommenderWeights:
        """Copies the tables out of ``model`` (found by `recommender_parts`).

        Example:
            >>> from kmr.models import build_recommender
            >>> RecommenderWeights.from_model(build_recommender(3, 5, 2)).items.shape
            (5, 2)
        """
        parts = recommender_parts(model)
        return cls(_weights(parts.embedding.user_embeddings),
                   _weights(parts.embedding.item_embeddings), parts.similarity)

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.users.shape[1])


def as_weights(source: keras.Model | RecommenderWeights) -> RecommenderWeights:
    """``source`` itself if it already is `RecommenderWeights`, else copied from the model."""
    if isinstance(source, RecommenderWeights):
        return source
    return RecommenderWeights.from_model(source)


@dataclass(frozen=True)
class ServingGraph:
    """A served graph: its function, signature and tables in serving layout.

    Attributes:
        kind: ``contract.GRAPH_RERANK`` or ``contract.GRAPH_RETRIEVE``.
        k: Constant number of results per row.
        function: ``tf.function`` taking the request inputs then the tables, by name.
        request_signature: Named `tf.TensorSpec` of the request inputs (contract order).
        tables: The tables, in the order the function takes them after the requests.
        num_users: Valid user ids are ``[0, num_users)``.
        num_items: Valid item ids are ``[0, num_items)``.
        embedding_dim: Embedding width D.
    """

    kind: str
    k: int
    function: Any
    request_signature: tuple[tf.TensorSpec, ...]
    tables: tuple[TableSpec, ...]
    num_users: int
    num_items: int
    embedding_dim: int

    @property
    def input_signature(self) -> list[tf.TensorSpec]:
        """Request specs followed by table specs: what the converter traces."""
        table_specs = [tf.TensorSpec(t.shape, tf.float32, name=t.name) for t in self.tables]
        return [*self.request_signature, *table_specs]

    def run_tf(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the TF graph with materialised tables (small models and tests only)."""
        args = [tf.constant(np.asarray(inputs[s.name], np.int64)) for s in self.request_signature]
        args += [tf.constant(t.to_numpy()) for t in self.tables]
        return {name: value.numpy() for name, value in self.function(*args).items()}


def serving_graph(
    model: keras.Model | RecommenderWeights, kind: str, k: int
) -> ServingGraph:
    """Builds the ``kind`` serving graph of a trained `kmr.models.build_recommender` model.

    Args:
        model: The trained Keras model (its kmr layers are found by `recommender_parts`)
            or its `RecommenderWeights`.
        kind: ``"rerank"`` or ``"retrieve"``.
        k: Results per row (> 0). Outputs are always ``[B, k]``.

    Returns:
        The graph; its tables reference the model's weights (no copy is made here).

    Raises:
        ValueError: Unknown ``kind`` or ``k <= 0``.

    Example:
        >>> from kmr.models import build_recommender
        >>> g = serving_graph(build_recommender(3, 5, 2, k=2), "retrieve", k=2)
        >>> [t.name for t in g.tables], g.tables[1].shape
        (['kmr_user_table', 'kmr_item_table_t'], (2, 8))
    """
    if kind not in contract.GRAPH_KINDS:
        raise ValueError(
            f"Invalid value received for argument `kind`. Expected one of "
            f"{contract.GRAPH_KINDS}. Received: kind={kind!r}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"Invalid value received for argument `k`. Expected a positive int. "
                         f"Received: k={k!r}")
    weights = as_weights(model)
    users, items, similarity = weights.users, weights.items, weights.similarity
    num_users, num_items, dim = weights.num_users, weights.num_items, weights.embedding_dim
    dims = dict(num_users=num_users, num_items=num_items, embedding_dim=dim)
    user_table = TableSpec(USER_TABLE, users.shape, lambda: _row_major_chunks(users))
    if kind == contract.GRAPH_RERANK:
        fn = _rerank_function(similarity, k, num_users, num_items)
        item_table = TableSpec(ITEM_TABLE, items.shape, lambda: _row_major_chunks(items))
        signature = (
            tf.TensorSpec([None], tf.int64, name=contract.USER_ID),
            tf.TensorSpec([None, None], tf.int64, name=contract.ITEM_IDS),
        )
    else:
        cosine = similarity.normalization == "cosine"
        fn = _retrieve_function(k, num_users, num_items, dim, cosine)
        n, d = items.shape
        item_table = TableSpec(
            ITEM_TABLE_T, (d, padded_columns(n)),
            lambda: _transposed_chunks(items, normalize=cosine),
        )
        signature = (
            tf.TensorSpec([None], tf.int64, name=contract.USER_ID),
            tf.TensorSpec([None, None], tf.int64, name=contract.EXCLUDE_ITEM_IDS),
        )
    return ServingGraph(kind, k, fn, signature, (user_table, item_table), **dims)


def _weights(variable: Any) -> np.ndarray:
    """The variable's values as a float32 numpy array (a copy: TF never hands out a view)."""
    array = np.asarray(keras.ops.convert_to_numpy(variable.value))
    return np.ascontiguousarray(array, dtype=np.float32)


def _row_major_chunks(table: np.ndarray) -> Iterator[tuple[int, memoryview]]:
    row_bytes = table.shape[1] * 4
    for start in range(0, table.shape[0], _CHUNK_ROWS):
        yield start * row_bytes, memoryview(table[start : start + _CHUNK_ROWS]).cast("B")


def _transposed_chunks(items: np.ndarray, *, normalize: bool) -> Iterator[tuple[int, memoryview]]:
    """Yields ``items.T`` (optionally rows L2-normalised) followed by zero pad columns
    up to `padded_columns` (at least one).

    Works on row blocks so memory stays at one block: row ``d`` of the output is written
    piecewise at ``d * padded + start``.
    """
    n, d = items.shape
    padded = padded_columns(n)
    stride = padded * 4
    for start in range(0, n, _CHUNK_ROWS):
        block = items[start : start + _CHUNK_ROWS]
        if normalize:  # same formula as the similarity layer's cosine option
            norms = np.sqrt(np.sum(np.square(block), axis=1, keepdims=True))
            block = block / np.maximum(norms, np.float32(1e-12))
        block_t = np.ascontiguousarray(block.T, dtype=np.float32)
        for row in range(d):
            yield row * stride + start * 4, memoryview(block_t[row]).cast("B")
    zero = np.zeros(padded - n, np.float32)
    for row in range(d):
        yield row * stride + n * 4, memoryview(zero).cast("B")


def _valid(ids: tf.Tensor, size: int) -> tf.Tensor:
    # Compared in int64 before any cast: a cast of 2**62 to int32 would wrap to 0.
    return tf.logical_and(ids >= 0, ids < size)


def _rerank_function(similarity: keras.layers.Layer, k: int, num_users: int, num_items: int):
    @tf.function(autograph=False)
    def rerank(user_id, item_ids, kmr_user_table, kmr_item_table):
        neg_inf = tf.constant(-np.inf, tf.float32)  # built inside: a capture becomes an input
        user_ok = _valid(user_id, num_users)
        item_ok = tf.logical_and(_valid(item_ids, num_items), user_ok[:, None])
        user_rows = tf.gather(kmr_user_table, tf.where(user_ok, user_id, 0))
        item_rows = tf.gather(kmr_item_table, tf.where(item_ok, item_ids, 0))
        scores = similarity([user_rows[:, None, :], item_rows])  # the trained layer
        scores = tf.where(item_ok, scores, neg_inf)
        # k padding columns make N + k >= k for any N (also N = 0): TopK never clamps.
        batch = tf.shape(item_ids)[0]
        scores = tf.concat([scores, tf.fill([batch, k], neg_inf)], axis=1)
        ids = tf.concat([item_ids, tf.fill([batch, k], tf.constant(-1, tf.int64))], axis=1)
        top_scores, positions = tf.math.top_k(scores, k=k, sorted=True)
        positions = tf.cast(positions, tf.int64)
        found = top_scores > neg_inf
        top_ids = tf.gather(ids, positions, batch_dims=1)
        invalid = tf.constant(contract.INVALID_ID, tf.int64)
        return {
            contract.TOP_ITEM_IDS: tf.where(found, top_ids, invalid),
            contract.TOP_POSITIONS: tf.where(found, positions, invalid),
            contract.TOP_SCORES: top_scores,
        }

    return rerank


def _retrieve_function(k: int, num_users: int, num_items: int, dim: int, cosine: bool):
    block = retrieve_block_size(num_items)
    padded = padded_columns(num_items)
    num_blocks = padded // block
    # Pad columns [num_items, padded) score 0 and are always excluded (-inf).
    pad_ids = np.arange(num_items, padded, dtype=np.int64)
    # All -inf rows after the chosen blocks: exclusions outside them land in the first,
    # and together they make the final TopK input >= k wide even when k > num_items.
    extra_rows = -(-k // block)

    @tf.function(autograph=False)
    def retrieve(user_id, exclude_item_ids, kmr_user_table, kmr_item_table_t):
        neg_inf = tf.constant(-np.inf, tf.float32)
        user_ok = _valid(user_id, num_users)
        user_rows = tf.gather(kmr_user_table, tf.where(user_ok, user_id, 0))
        # Normalise the [B, D] side only: the item side is stored normalised/as-is.
        if cosine:
            norms = tf.sqrt(tf.reduce_sum(tf.square(user_rows), axis=-1, keepdims=True))
            user_rows = user_rows / tf.maximum(norms, 1e-12)
        else:
            user_rows = user_rows * (1.0 / math.sqrt(dim))
        scores = tf.matmul(user_rows, kmr_item_table_t)  # [B, padded]; pad columns dummies
        batch = tf.shape(user_id)[0]
        exclude = tf.broadcast_to(exclude_item_ids, [batch, tf.shape(exclude_item_ids)[1]])
        # Invalid / padding exclusions point at the first pad column, always excluded.
        columns = tf.where(_valid(exclude, num_items), exclude, num_items)
        columns = tf.concat([columns, tf.tile(tf.constant(pad_ids)[None, :], [batch, 1])], 1)
        # Stage 1: exact block pruning. The k best non-excluded items lie in the
        # k + (number of excluded columns) blocks with the largest maxima (ties to the
        # lower block), so only those blocks are looked at again. Nothing of size
        # [B, padded] is copied or scattered into.
        blocked = tf.reshape(scores, [batch, num_blocks, block])
        block_max = tf.reduce_max(blocked, axis=2)  # [B, num_blocks]
        wanted = tf.minimum(k + tf.shape(columns)[1], num_blocks)
        _, chosen = tf.math.top_k(block_max, k=wanted, sorted=True)  # int32 [B, wanted]
        # Ascending block order keeps "ties go to the lower item id" in stage 2.
        chosen = tf.cast(-tf.math.top_k(-tf.cast(chosen, tf.float32), k=wanted)[0], tf.int32)
        picked = tf.gather(blocked, chosen, batch_dims=1)  # [B, wanted, block]
        picked = tf.concat([picked, tf.fill([batch, extra_rows, block], neg_inf)], axis=1)
        # Exclusions land in their chosen block, or in the first all -inf extra row.
        rows = tf.range(batch)[:, None]
        rank_map = tf.tensor_scatter_nd_update(
            tf.fill([batch, num_blocks], wanted),
            tf.stack([tf.broadcast_to(rows, tf.shape(chosen)), chosen], axis=-1),
            tf.broadcast_to(tf.range(wanted)[None, :], tf.shape(chosen)),
        )
        columns = tf.cast(columns, tf.int32)
        ranks = tf.gather(rank_map, columns // block, batch_dims=1)
        rows = tf.broadcast_to(rows, tf.shape(columns))
        picked = tf.tensor_scatter_nd_update(
            picked, tf.stack([rows, ranks, columns % block], axis=-1),
            tf.fill(tf.shape(columns), neg_inf),
        )
        # Stage 2: TopK over the chosen blocks only.
        top_scores, positions = tf.math.top_k(
            tf.reshape(picked, [batch, -1]), k=k, sorted=True
        )
        chosen = tf.concat([chosen, tf.zeros([batch, extra_rows], tf.int32)], axis=1)
        top_blocks = tf.gather(chosen, positions // block, batch_dims=1)
        top_ids = tf.cast(top_blocks, tf.int64) * block + tf.cast(positions % block, tf.int64)
        found = tf.logical_and(top_scores > neg_inf, user_ok[:, None])
        invalid = tf.constant(contract.INVALID_ID, tf.int64)
        return {
            contract.TOP_ITEM_IDS: tf.where(found, top_ids, invalid),
            contract.TOP_SCORES: tf.where(found, top_scores, neg_inf),
        }

    return retrieve
