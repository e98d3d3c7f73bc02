"""Model builders: the spec's complete recommendation model from the three layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from kmr.layers import (
    CollaborativeUserItemEmbedding,
    NormalizedDotProductSimilarity,
    TopKRecommendationSelector,
)

USER_INPUT = "user_id"
ITEMS_INPUT = "item_ids"


def build_recommender(
    num_users: int,
    num_items: int,
    embedding_dim: int = 32,
    l2_reg: float = 1e-4,
    k: int = 10,
    normalization: str = "sqrt_dim",
) -> keras.Model:
    """Builds the spec's recommender: embed, score candidates, keep the top k.

    Inputs: ``user_id`` int64 ``(B,)`` and ``item_ids`` int64 ``(B, N)`` (N dynamic).
    Outputs: ``[indices, scores]``, each ``(B, min(k, N))``; indices are positions in
    ``item_ids``.

    Example:
        >>> import numpy as np
        >>> model = build_recommender(num_users=5, num_items=20, embedding_dim=4, k=3)
        >>> indices, scores = model([np.array([0, 1]), np.array([[1, 2, 3, 4]] * 2)])
        >>> tuple(indices.shape), tuple(scores.shape)
        ((2, 3), (2, 3))
    """
    user_id = keras.Input(shape=(), dtype="int64", name=USER_INPUT)
    item_ids = keras.Input(shape=(None,), dtype="int64", name=ITEMS_INPUT)
    embedding = CollaborativeUserItemEmbedding(
        num_users, num_items, embedding_dim, l2_reg, name="embedding"
    )
    similarity = NormalizedDotProductSimilarity(normalization, name="similarity")
    selector = TopKRecommendationSelector(k, name="top_k")
    user_emb, item_emb = embedding([user_id, item_ids])
    scores = similarity([ops.expand_dims(user_emb, 1), item_emb])
    indices, top_scores = selector(scores)
    return keras.Model([user_id, item_ids], [indices, top_scores], name="recommender")


@dataclass(frozen=True)
class RecommenderParts:
    """The layers of a recommender that export and training reach into."""

    embedding: CollaborativeUserItemEmbedding
    similarity: NormalizedDotProductSimilarity
    selector: TopKRecommendationSelector


def recommender_parts(model: keras.Model) -> RecommenderParts:
    """Finds the kmr layers of ``model``: one embedding, one similarity, at most one selector.

    ``selector`` is None for a model without a `TopKRecommendationSelector`.

    Example:
        >>> parts = recommender_parts(build_recommender(5, 20, 4, k=3))
        >>> parts.selector.k
        3
    """
    found: dict[type, list[Any]] = {
        CollaborativeUserItemEmbedding: [],
        NormalizedDotProductSimilarity: [],
        TopKRecommendationSelector: [],
    }
    for layer in model.layers:
        for cls, matches in found.items():
            if isinstance(layer, cls):
                matches.append(layer)
    for cls, matches in found.items():
        if len(matches) != 1 and not (cls is TopKRecommendationSelector and not matches):
            raise ValueError(
                f"Expected exactly one {cls.__name__} layer in model {model.name!r}. "
                f"Received: {len(matches)}"
            )
    return RecommenderParts(
        embedding=found[CollaborativeUserItemEmbedding][0],
        similarity=found[NormalizedDotProductSimilarity][0],
        selector=(found[TopKRecommendationSelector] or [None])[0],
    )
