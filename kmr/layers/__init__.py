"""The seed's Keras layers for matrix-factorisation recommenders.

Example:
    >>> from kmr.layers import (
    ...     CollaborativeUserItemEmbedding,
    ...     NormalizedDotProductSimilarity,
    ...     TopKRecommendationSelector,
    ... )
"""

from kmr.layers.collaborative_user_item_embedding import CollaborativeUserItemEmbedding
from kmr.layers.normalized_dot_product_similarity import NormalizedDotProductSimilarity
from kmr.layers.top_k_recommendation_selector import TopKRecommendationSelector

__all__ = [
    "CollaborativeUserItemEmbedding",
    "NormalizedDotProductSimilarity",
    "TopKRecommendationSelector",
]
