"""Top-k selection of scored candidates."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kmr.layers._checks import check_positive_int


@keras.saving.register_keras_serializable(package="kmr")
class TopKRecommendationSelector(keras.layers.Layer):
    """Selects the ``k`` best-scored candidates per row.

    Input: scores ``(B, N)``. Output: ``(indices, scores)`` in that order (the spec's),
    each ``(B, min(k, N))``: ``indices`` are int32 positions along N, ``scores`` are
    sorted descending and ties go to the lower index. ``N < k`` returns all N
    candidates, sorted; ``N == 0`` returns empty ``(B, 0)`` outputs.

    Args:
        k: How many candidates to keep (> 0).

    Example:
        >>> import numpy as np
        >>> selector = TopKRecommendationSelector(k=2)
        >>> indices, scores = selector(np.array([[0.1, 0.9, 0.5]], "float32"))
        >>> indices.numpy().tolist(), np.round(scores.numpy().astype(float), 2).tolist()
        ([[1, 2]], [[0.9, 0.5]])
    """

    def __init__(self, k: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_positive_int("k", k)

    def call(self, scores: Any) -> tuple[Any, Any]:
        if len(scores.shape) != 2:
            raise ValueError(
                f"TopKRecommendationSelector expects scores of shape (B, N). "
                f"Received: shape={tuple(scores.shape)}"
            )
        n = scores.shape[-1]
        if n is None:  # unknown until run time: clamp inside the graph
            k = ops.minimum(self.k, ops.shape(scores)[-1])
        else:
            k = min(self.k, n)
        top_scores, indices = ops.top_k(scores, k=k, sorted=True)
        return ops.cast(indices, "int32"), top_scores

    def compute_output_spec(self, scores: Any) -> tuple[Any, Any]:
        n = scores.shape[-1]
        k = None if n is None else min(self.k, n)
        batch = scores.shape[0]
        return (
            keras.KerasTensor((batch, k), dtype="int32"),
            keras.KerasTensor((batch, k), dtype=self.compute_dtype),
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(k=self.k)
        return config
