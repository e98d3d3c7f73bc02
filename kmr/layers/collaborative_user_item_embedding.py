"""Dual embedding lookup: user ids and item ids to their latent vectors."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from kmr.layers._checks import check_non_negative_float, check_positive_int


def concrete_values(x: Any) -> np.ndarray | None:
    """Returns ``x`` as a numpy array when its values are known now, else None.

    Values are known for numpy arrays, Python lists and eager tensors; they are not
    known while a graph is traced (``tf.function``, ``model.fit``, export).
    """
    if isinstance(x, (np.ndarray, list, tuple, int, np.integer)):
        return np.asarray(x)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(x, tf.Tensor) and tf.executing_eagerly() and hasattr(x, "numpy"):
            return x.numpy()
        return None
    try:  # other backends: a traced value refuses conversion
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001 - any refusal means "not concrete"
        return None


def check_ids_in_range(name: str, ids: Any, size: int) -> None:
    """Raises ValueError naming the first id of ``ids`` outside ``[0, size)``.

    Does nothing when the values are not concrete (inside a traced graph); there the
    lookup masks invalid ids instead (see `CollaborativeUserItemEmbedding`).
    """
    values = concrete_values(ids)
    if values is None or values.size == 0:
        return
    bad = (values < 0) | (values >= size)
    if bad.any():
        first = values[bad].flat[0]
        raise ValueError(
            f"`{name}` out of range: received id {int(first)} "
            f"({int(bad.sum())} of {values.size} ids invalid). "
            f"Expected ids in [0, {size})."
        )


def masked_lookup(table: Any, ids: Any, size: int) -> Any:
    """Gathers rows of ``table``; ids outside ``[0, size)`` give a zero vector.

    Gather alone would wrap a negative id to the end of the table (another entity's
    row) and fail the whole batch for an id >= size; masking avoids both.
    """
    # Range check on the ids as given: casting first would turn 2**32 + 5 into 5.
    valid = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, size))
    safe_ids = ops.where(valid, ids, ops.zeros_like(ids))
    safe_ids = ops.cast(safe_ids, "int32" if size < 2**31 else "int64")
    rows = ops.take(table, safe_ids, axis=0)
    return rows * ops.expand_dims(ops.cast(valid, rows.dtype), -1)


@keras.saving.register_keras_serializable(package="kmr")
class CollaborativeUserItemEmbedding(keras.layers.Layer):
    """Looks up user and item embeddings from two trainable tables.

    Inputs are ``[user_ids, item_ids]``. ``user_ids`` of shape ``(B,)`` (or ``(B, 1)``,
    whose trailing axis of size 1 is squeezed) give ``(B, D)``; ``item_ids`` of any shape
    ``(B, ...)`` give ``(B, ..., D)``.

    Regularization: when ``l2_reg > 0`` each call adds
    ``l2_reg * (sum(user_rows**2) + sum(item_rows**2)) / B`` to ``layer.losses``: the
    usual sparse form of L2 for embedding tables, which penalises the rows a batch uses
    so its cost follows the batch, not the catalogue (a 10M-row table is never read
    whole per step). It is zero when ``l2_reg == 0``.

    Out-of-range ids (negative, or >= the table size): with concrete values (eager
    calls) the layer raises ValueError naming the id and the allowed range. Inside a
    traced graph (training step, export) an invalid id gives an all-zero vector, never
    another entity's row; served graphs additionally mask such ids to score ``-inf``.

    Args:
        num_users: Rows of the user table (> 0).
        num_items: Rows of the item table (> 0).
        embedding_dim: Width D of both tables (> 0).
        l2_reg: L2 strength on the looked-up rows (>= 0).

    Example:
        >>> import numpy as np
        >>> layer = CollaborativeUserItemEmbedding(num_users=10, num_items=50, embedding_dim=8)
        >>> u, i = layer([np.array([1, 2]), np.array([[3, 4, 5], [6, 7, 8]])])
        >>> tuple(u.shape), tuple(i.shape)
        ((2, 8), (2, 3, 8))
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        l2_reg: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_users = check_positive_int("num_users", num_users)
        self.num_items = check_positive_int("num_items", num_items)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.l2_reg = check_non_negative_float("l2_reg", l2_reg)

    def build(self, input_shape: Any = None) -> None:
        init = keras.initializers.RandomUniform(-0.05, 0.05)
        self.user_embeddings = self.add_weight(
            name="user_embeddings",
            shape=(self.num_users, self.embedding_dim),
            initializer=init,
        )
        self.item_embeddings = self.add_weight(
            name="item_embeddings",
            shape=(self.num_items, self.embedding_dim),
            initializer=init,
        )
        super().build(input_shape)

    def call(self, inputs: Any) -> tuple[Any, Any]:
        user_ids, item_ids = self._split_inputs(inputs)
        check_ids_in_range("user_ids", user_ids, self.num_users)
        check_ids_in_range("item_ids", item_ids, self.num_items)
        user_emb = masked_lookup(self.user_embeddings, user_ids, self.num_users)
        item_emb = masked_lookup(self.item_embeddings, item_ids, self.num_items)
        if self.l2_reg > 0:
            batch = ops.cast(ops.maximum(ops.shape(user_emb)[0], 1), user_emb.dtype)
            penalty = ops.sum(ops.square(user_emb)) + ops.sum(ops.square(item_emb))
            self.add_loss(self.l2_reg * penalty / batch)
        return user_emb, item_emb

    def compute_output_spec(self, inputs: Any) -> tuple[Any, Any]:
        user_ids, item_ids = self._split_inputs(inputs)
        d = self.embedding_dim
        return (
            keras.KerasTensor(tuple(user_ids.shape) + (d,), dtype=self.compute_dtype),
            keras.KerasTensor(tuple(item_ids.shape) + (d,), dtype=self.compute_dtype),
        )

    @staticmethod
    def _split_inputs(inputs: Any) -> tuple[Any, Any]:
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "CollaborativeUserItemEmbedding expects inputs [user_ids, item_ids]. "
                f"Received: {type(inputs).__name__} of length "
                f"{len(inputs) if isinstance(inputs, (list, tuple)) else 'n/a'}"
            )
        user_ids, item_ids = inputs
        if len(user_ids.shape) == 2 and user_ids.shape[-1] == 1:
            user_ids = ops.squeeze(user_ids, axis=-1)
        if len(user_ids.shape) != 1:
            raise ValueError(
                "`user_ids` must have shape (B,) or (B, 1). "
                f"Received: shape={tuple(user_ids.shape)}"
            )
        return user_ids, item_ids

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            num_users=self.num_users,
            num_items=self.num_items,
            embedding_dim=self.embedding_dim,
            l2_reg=self.l2_reg,
        )
        return config
