"""Training objectives for the dual-embedding model, as a Keras model that shares its layers.

`ObjectiveModel` wraps the inference model's `CollaborativeUserItemEmbedding` and
`NormalizedDotProductSimilarity` (same objects, so same weights) and turns a batch of
positive ``(user, item)`` pairs into a loss:

- ``"full_softmax"``: softmax over the whole catalogue. Exact, and cheap while N is
  moderate: one ``(B, D) x (D, N)`` product per step.
- ``"sampled_softmax"``: softmax over the batch's own positives (in-batch negatives)
  with the logQ correction (subtract ``logq_weight`` times the log of each item's
  sampling probability, i.e. its share of training positives) so popular items are
  not over-penalised. Cost is independent of N.
- ``"bpr"``: pairwise ``-log sigmoid(s_pos - s_neg)`` against uniformly sampled items.

The similarity divides dot products by sqrt(D), which leaves logits near 0 at
initialisation; every objective divides them by ``temperature`` (a tuned setting).
The embedding layer's L2 penalty on the rows a batch looks up is added to each loss.

Example:
    >>> import numpy as np
    >>> from kmr.models import build_recommender, recommender_parts
    >>> parts = recommender_parts(build_recommender(4, 6, embedding_dim=8))
    >>> model = ObjectiveModel(parts.embedding, parts.similarity, "full_softmax",
    ...                        item_counts=np.ones(6))
    >>> model.compile(optimizer="adam")
    >>> _ = model.fit({"user": np.array([0, 1]), "item": np.array([2, 3])}, verbose=0)
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from kmr.layers import CollaborativeUserItemEmbedding, NormalizedDotProductSimilarity
from kmr.training.settings import GRADIENT_OBJECTIVES

# Large negative logit for masked entries (not -inf: 0 * inf would poison gradients).
_MASKED = -1e9


class ObjectiveModel(keras.Model):
    """Computes one objective's loss for batches ``{"user": (B,), "item": (B,)}``.

    Args:
        embedding: The inference model's embedding layer (weights are shared).
        similarity: The inference model's similarity layer.
        objective: One of ``GRADIENT_OBJECTIVES``.
        item_counts: Training positives per item, shape ``(num_items,)``; gives the
            logQ correction of ``"sampled_softmax"``.
        temperature: Logits are ``similarity / temperature`` (> 0).
        num_negatives: Sampled negatives per positive for ``"bpr"``.
        seed: Seeds the negative sampling of ``"bpr"``.
        logq_weight: Strength of the logQ correction of ``"sampled_softmax"`` (1 = the
            full correction, 0 = none).
    """

    def __init__(
        self,
        embedding: CollaborativeUserItemEmbedding,
        similarity: NormalizedDotProductSimilarity,
        objective: str,
        item_counts: np.ndarray,
        temperature: float = 1.0,
        num_negatives: int = 16,
        seed: int = 0,
        logq_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if objective not in GRADIENT_OBJECTIVES:
            raise ValueError(
                f"Invalid value received for argument `objective`. Expected one of "
                f"{GRADIENT_OBJECTIVES}. Received: objective={objective!r}"
            )
        if not temperature > 0:
            raise ValueError(
                "Invalid value received for argument `temperature`. Expected a float > 0. "
                f"Received: temperature={temperature!r}"
            )
        self.embedding = embedding
        self.similarity = similarity
        self.objective = objective
        self.temperature = float(temperature)
        self.num_negatives = int(num_negatives)
        self.num_items = embedding.num_items
        counts = np.asarray(item_counts, dtype=np.float64)
        probability = np.maximum(counts, 1.0) / max(counts.sum(), 1.0)
        self._log_q = (float(logq_weight) * np.log(probability)).astype(np.float32)
        self._seed = keras.random.SeedGenerator(seed)

    def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
        users, items = inputs["user"], inputs["item"]
        if self.objective == "full_softmax":
            user_emb, _ = self.embedding([users, ops.expand_dims(items, 1)])  # L2 on used rows
            scores = pairwise_scores(self.similarity, user_emb, self.embedding.item_embeddings)
        elif self.objective == "sampled_softmax":
            user_emb, item_emb = self.embedding([users, items])
            # (B, B): row i scores every positive of the batch.
            scores = pairwise_scores(self.similarity, user_emb, item_emb)
        else:
            negatives = keras.random.randint(
                (ops.shape(items)[0], self.num_negatives), 0, self.num_items,
                seed=self._seed, dtype="int64",
            )
            candidates = ops.concatenate(
                [ops.expand_dims(ops.cast(items, "int64"), 1), negatives], axis=1
            )
            user_emb, cand_emb = self.embedding([users, candidates])
            scores = self.similarity([ops.expand_dims(user_emb, 1), cand_emb])  # (B, 1+n)
        return scores / self.temperature

    def compute_loss(
        self,
        x: dict[str, Any] | None = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        items = ops.cast(x["item"], "int64")
        if self.objective == "full_softmax":
            loss = ops.mean(ops.sparse_categorical_crossentropy(items, y_pred, from_logits=True))
        elif self.objective == "sampled_softmax":
            log_q = ops.take(ops.convert_to_tensor(self._log_q), items)
            logits = y_pred - ops.expand_dims(log_q, 0)
            # Another row holding the same item is that row's positive, not a negative.
            same = ops.equal(ops.expand_dims(items, 1), ops.expand_dims(items, 0))
            eye = ops.eye(ops.shape(items)[0], dtype="bool")
            logits = ops.where(ops.logical_and(same, ops.logical_not(eye)), _MASKED, logits)
            labels = ops.arange(ops.shape(items)[0])
            loss = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        else:
            margin = y_pred[:, :1] - y_pred[:, 1:]
            loss = ops.mean(ops.softplus(-margin))
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss


def pairwise_scores(similarity: NormalizedDotProductSimilarity, a: Any, b: Any) -> Any:
    """Every row of ``a (P, D)`` against every row of ``b (Q, D)``: ``(P, Q)`` scores.

    Goes through the similarity layer as ``(P, 1, D)`` against ``(1, Q, D)``, a shape
    the layer computes as one 2-D MatMul (cheap gradient).

    Example:
        >>> import numpy as np
        >>> sim = NormalizedDotProductSimilarity()
        >>> a, b = np.ones((2, 4), "float32"), np.ones((3, 4), "float32")
        >>> np.asarray(pairwise_scores(sim, a, b)).tolist()
        [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """
    return similarity([ops.expand_dims(a, 1), ops.expand_dims(b, 0)])
