"""Hyper-parameters of a training run (no Keras import: the CLI's --help stays fast).

Example:
    >>> TrainSettings().resolved_objective(num_items=1000)
    'low_rank_ridge'
    >>> TrainSettings(objective="auto").resolved_objective(num_items=1000)
    'full_softmax'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Trained by gradient steps over epochs (`kmr.training.objectives`).
GRADIENT_OBJECTIVES = ("full_softmax", "sampled_softmax", "bpr")
# Solved in closed form, no epochs (`kmr.training.low_rank_ridge`).
CLOSED_FORM_OBJECTIVES = ("low_rank_ridge",)
OBJECTIVES = GRADIENT_OBJECTIVES + CLOSED_FORM_OBJECTIVES

# "auto" uses the exact full softmax up to this catalogue size: a (B, N) logit block
# per step stays affordable (128 x 100k floats = 50 MB); above it, in-batch sampled
# softmax with logQ correction, whose cost does not grow with N. Of the gradient
# objectives, sampled softmax ranked as well as full softmax on MovieLens validation
# (Recall@10 0.089 vs 0.086, within noise) at a quarter of the time
# (benchmarks/results/objectives.md). The default is the closed-form "low_rank_ridge":
# it ranked above the sampled-softmax defaults on all three variants of MovieLens, on
# validation and test, HR@10 and NDCG@10 (benchmarks/results/objective_variants.md).
FULL_SOFTMAX_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one training run.

    The default objective is ``"low_rank_ridge"`` (closed form: ``embedding_dim``,
    ``ridge_shrinkage`` and ``seed`` are its settings; ``ridge_shrinkage`` 10 was
    within noise of 5 and 20 on MovieLens and above both on average). The rest are
    the gradient objectives' settings; they come from the validation-split grid of
    benchmarks/bench_tune_defaults.py (MovieLens latest-small, rating >= 4, LazyAdam
    loop): learning rate 0.002 / D 128 beat 0.005 and D 64; temperatures 0.05-0.2 were
    within noise. Batch 128 replaced 256 once `train` chose the epoch count: with it,
    batch 128 scored higher on validation on all three variants of MovieLens
    (positives = ratings >= 4, >= 3, every rating; 5 seeds each,
    benchmarks/results/batch_size.md) and trains 1-4% faster (the in-batch softmax
    costs B^2 per step; benchmarks/results/train_steady.md). The best epoch count
    depends on the data (MovieLens ratings >= 4: a plateau from epoch 11 to 20; every
    rating as a positive: a peak at epoch 5, then overfitting), so `train` chooses it
    by early stopping on a validation split, up to ``epochs``.

    Attributes:
        embedding_dim: Width D of the user and item tables.
        epochs: Passes over the training positives; with ``patience > 0`` the most
            that `train` runs: it chooses the count on a validation split
            (`kmr.training.epoch_choice`).
        patience: Early stopping: a fit with validation stops once its (smoothed)
            validation score has not improved for this many epochs; 0 runs every epoch.
        batch_size: Positives per step.
        learning_rate: Adam step size.
        l2_reg: L2 on the embedding rows each batch looks up.
        temperature: Logits are ``similarity / temperature``.
        objective: ``"auto"`` or one of ``objectives.OBJECTIVES``.
        num_negatives: Sampled negatives per positive for ``"bpr"``.
        ridge_shrinkage: ``"low_rank_ridge"``'s ridge strength, in units of the mean
            item popularity.
        logq_weight: Strength of sampled softmax's logQ (popularity) correction.
        full_softmax_max_items: ``"auto"`` picks full softmax up to this many items.
        k: Top-k kept by the saved model (and the metrics' cut-off).
        normalization: The similarity layer's ``"sqrt_dim"`` or ``"cosine"``.
        seed: Seeds weights, shuffling and sampling; equal seeds give equal weights.
    """

    embedding_dim: int = 128
    epochs: int = 30
    patience: int = 3
    batch_size: int = 128
    learning_rate: float = 0.002
    l2_reg: float = 1e-3
    temperature: float = 0.1
    objective: str = "low_rank_ridge"
    num_negatives: int = 16
    ridge_shrinkage: float = 10.0
    logq_weight: float = 1.0
    full_softmax_max_items: int = FULL_SOFTMAX_MAX_ITEMS
    k: int = 10
    normalization: str = "sqrt_dim"
    seed: int = 0

    def resolved_objective(self, num_items: int) -> str:
        """The objective actually used for a catalogue of ``num_items`` items."""
        if self.objective == "auto":
            if num_items <= self.full_softmax_max_items:
                return "full_softmax"
            return "sampled_softmax"
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"Invalid value received for argument `objective`. Expected 'auto' or one "
                f"of {OBJECTIVES}. Received: objective={self.objective!r}"
            )
        return self.objective

    def has_epochs(self, num_items: int) -> bool:
        """Whether the objective trains over epochs (closed-form ones do not).

        Example:
            >>> TrainSettings(objective="low_rank_ridge").has_epochs(num_items=1000)
            False
        """
        return self.resolved_objective(num_items) not in CLOSED_FORM_OBJECTIVES


def settings_to_dict(settings: TrainSettings) -> dict[str, object]:
    """JSON-ready settings (the ``train_settings.json`` content's ``settings`` part)."""
    return asdict(settings)


def with_overrides(settings: TrainSettings, **overrides: object) -> TrainSettings:
    """A copy of ``settings`` with the non-None ``overrides`` applied (CLI flags)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
