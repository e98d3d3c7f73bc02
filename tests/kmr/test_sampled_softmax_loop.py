"""The compiled sampled-softmax loop trains exactly like the Keras objective + LazyAdam."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kmr.models import build_recommender, recommender_parts
from kmr.training.fit import TrainSettings, fit_recommender
from kmr.training.objectives import ObjectiveModel
from kmr.training.optimizers import LazyAdam
from kmr.training.sampled_softmax_loop import (
    LoopSettings,
    SampledSoftmaxLoop,
    epoch_batches,
    first_occurrence,
    item_copies,
)

# Users 0 and 2 and items 5 and 1 repeat inside a batch; 11 rows in batches of 4 leave a
# padded last batch of 3.
SOFTMAX_3_EPOCHS = TrainSettings(epochs=3, embedding_dim=4, objective="sampled_softmax")
USERS = np.array([0, 0, 1, 2, 2, 3, 0, 2, 4, 1, 3])
ITEMS = np.array([5, 1, 5, 1, 2, 6, 5, 0, 3, 5, 4])
NUM_USERS, NUM_ITEMS, DIM = 5, 7, 6


def test_first_occurrence_equals_brute_force_when_rows_random():
    ids = np.random.default_rng(0).integers(0, 9, size=(50, 17))
    expected = [[list(row).index(v) for v in row] for row in ids]
    assert first_occurrence(ids).tolist() == expected


def test_item_copies_counts_real_rows_of_the_batch_when_ids_repeat_and_rows_padded():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=(40, 9))
    valid = (rng.random((40, 9)) < 0.8).astype(np.float32)
    valid[:, 0] = 1.0
    expected = [[max(1.0, float(sum(v for x, v in zip(row, ok, strict=True) if x == value)))
                 for value in row] for row, ok in zip(ids, valid, strict=True)]
    assert item_copies(first_occurrence(ids), valid).tolist() == expected


def test_epoch_batches_pads_last_batch_with_its_first_row_when_rows_left_over():
    order = np.array([4, 0, 3, 1, 2])
    batches = epoch_batches(np.arange(5) * 10, np.arange(5), batch_size=2, order=order)
    assert batches.users.tolist() == [[40, 0], [30, 10], [20, 20]]
    assert batches.valid.tolist() == [[1, 1], [1, 1], [1, 0]]
    assert batches.user_first[-1].tolist() == [0, 0]
    # The padding slot repeats item 2 but is nobody's copy: item 2 has one real row.
    assert batches.copies[-1].tolist() == [1.0, 1.0]


def _models(normalization: str) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(3)
    a = build_recommender(NUM_USERS, NUM_ITEMS, DIM, l2_reg=0.01, normalization=normalization)
    b = build_recommender(NUM_USERS, NUM_ITEMS, DIM, l2_reg=0.01, normalization=normalization)
    for src, dst in zip(a.weights, b.weights, strict=True):
        dst.assign(src.numpy())
    return a, b


@pytest.mark.parametrize("normalization", ["sqrt_dim", "cosine"])
def test_loop_updates_equal_keras_lazy_adam_when_batches_hold_repeats(normalization):
    keras_model, loop_model = _models(normalization)
    counts = np.bincount(ITEMS, minlength=NUM_ITEMS)
    parts = recommender_parts(keras_model)
    trainer = ObjectiveModel(parts.embedding, parts.similarity, "sampled_softmax",
                             item_counts=counts, temperature=0.2, logq_weight=0.5)
    trainer.compile(optimizer=LazyAdam(0.05))
    history = trainer.fit({"user": USERS, "item": ITEMS}, batch_size=4, epochs=3,
                          shuffle=False, verbose=0)

    parts = recommender_parts(loop_model)
    loop = SampledSoftmaxLoop(parts.embedding, parts.similarity, counts,
                              LoopSettings(learning_rate=0.05, temperature=0.2,
                                           logq_weight=0.5))
    losses = [loop.run_epoch(epoch_batches(USERS, ITEMS, 4)) for _ in range(3)]

    for trained, looped in zip(keras_model.weights, loop_model.weights, strict=True):
        np.testing.assert_allclose(looped.numpy(), trained.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-4)
    # Sanity: training moved the rows it saw (a loop that did nothing would fail here).
    assert not np.allclose(loop_model.weights[0].numpy(), _models(normalization)[0]
                           .weights[0].numpy())


def test_loop_leaves_unseen_rows_untouched_when_trained():
    model = build_recommender(NUM_USERS, NUM_ITEMS, DIM)
    before = [w.numpy().copy() for w in model.weights]
    parts = recommender_parts(model)
    loop = SampledSoftmaxLoop(parts.embedding, parts.similarity, np.ones(NUM_ITEMS),
                              LoopSettings(learning_rate=0.1, temperature=0.1))
    loop.run_epoch(epoch_batches(np.array([0, 1]), np.array([2, 3]), batch_size=4))
    users, items = (w.numpy() for w in model.weights)
    assert np.array_equal(users[2:], before[0][2:]) and np.array_equal(items[[0, 1, 4, 5, 6]],
                                                                      before[1][[0, 1, 4, 5, 6]])
    assert not np.array_equal(users[:2], before[0][:2])


def test_loop_refuses_temperature_when_not_positive():
    parts = recommender_parts(build_recommender(2, 2, 2))
    with pytest.raises(ValueError, match="temperature=0"):
        SampledSoftmaxLoop(parts.embedding, parts.similarity, np.ones(2),
                           LoopSettings(learning_rate=0.1, temperature=0))


def test_fit_recommender_records_epoch_seconds_when_loop_runs():
    from kmr.data.synthetic import make_synthetic

    data = make_synthetic(num_users=30, num_items=20, interactions_per_user=4)
    fit = fit_recommender(data, SOFTMAX_3_EPOCHS, verbose=0)
    assert len(fit.epoch_seconds) == 3 and fit.loss[-1] < fit.loss[0]


def test_fit_recommender_refuses_compiled_loop_when_objective_not_sampled_softmax():
    from kmr.data.synthetic import make_synthetic

    data = make_synthetic(num_users=10, num_items=8, interactions_per_user=3)
    with pytest.raises(ValueError, match="objective='bpr'"):
        fit_recommender(data, TrainSettings(epochs=1, embedding_dim=4, objective="bpr"),
                        verbose=0, compiled_loop=True)


def test_fit_recommender_trains_with_keras_fit_when_compiled_loop_off():
    from kmr.data.synthetic import make_synthetic

    data = make_synthetic(num_users=30, num_items=20, interactions_per_user=4)
    fit = fit_recommender(data, SOFTMAX_3_EPOCHS, verbose=0, compiled_loop=False)
    assert len(fit.epoch_seconds) == 3 and fit.loss[-1] < fit.loss[0]


def test_second_loop_reuses_compiled_steps_when_shapes_equal():
    from kmr.training.sampled_softmax_loop import _compiled_steps

    def one_epoch(learning_rate: float) -> None:
        parts = recommender_parts(build_recommender(NUM_USERS, NUM_ITEMS, DIM, l2_reg=0.5))
        loop = SampledSoftmaxLoop(parts.embedding, parts.similarity, np.ones(NUM_ITEMS),
                                  LoopSettings(learning_rate=learning_rate, temperature=0.3))
        loop.run_epoch(epoch_batches(USERS, ITEMS, 4))

    one_epoch(0.1)
    traced = _compiled_steps().experimental_get_tracing_count()
    one_epoch(0.2)  # new tables, new settings, same shapes
    assert _compiled_steps().experimental_get_tracing_count() == traced
