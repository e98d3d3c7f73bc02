from __future__ import annotations

import keras
import numpy as np
import pytest

from kmr.layers import TopKRecommendationSelector
from tests.support.layer_roundtrip import assert_config_round_trip, assert_save_load_identical


def reference_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable argsort on negated scores: descending, ties to the lower index."""
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=-1)


@pytest.mark.parametrize(("batch", "n", "k"), [(1, 100, 10), (7, 5, 10), (4, 10, 10), (3, 1, 4)])
def test_selector_matches_stable_argsort_when_n_is_above_equal_or_below_k(batch, n, k):
    scores = np.random.default_rng(n).normal(size=(batch, n)).astype("float32")
    indices, top_scores = TopKRecommendationSelector(k)(scores)
    expected_indices, expected_scores = reference_top_k(scores, k)
    assert tuple(indices.shape) == tuple(top_scores.shape) == (batch, min(k, n))
    assert indices.dtype == "int32"
    assert top_scores.dtype == "float32"
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(top_scores.numpy(), expected_scores)


def test_selector_breaks_ties_by_lower_index_when_scores_repeat():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], "float32")
    indices, top_scores = TopKRecommendationSelector(4)(scores)
    assert indices.numpy().tolist() == [[1, 2, 4, 3]]
    assert top_scores.numpy().tolist() == [[3.0, 3.0, 3.0, 2.0]]


def test_selector_returns_empty_outputs_when_there_are_no_candidates():
    indices, top_scores = TopKRecommendationSelector(5)(np.zeros((3, 0), "float32"))
    assert tuple(indices.shape) == tuple(top_scores.shape) == (3, 0)


def test_selector_clamps_k_at_run_time_when_n_is_dynamic():
    import tensorflow as tf

    selector = TopKRecommendationSelector(5)
    fn = tf.function(selector, input_signature=[tf.TensorSpec([None, None], tf.float32)])
    indices, _ = fn(tf.constant([[0.5, 0.1, 0.9]]))
    assert indices.numpy().tolist() == [[2, 0, 1]]


def test_selector_symbolic_shape_is_min_k_n_when_n_known():
    scores = keras.Input(shape=(3,))
    indices, top_scores = TopKRecommendationSelector(10)(scores)
    assert tuple(indices.shape) == tuple(top_scores.shape) == (None, 3)


def test_selector_raises_when_scores_are_not_2d():
    expected = r"expects scores of shape \(B, N\). Received: shape=\(4,\)"
    with pytest.raises(ValueError, match=expected):
        TopKRecommendationSelector(2)(np.ones((4,), "float32"))


@pytest.mark.parametrize("k", [0, -1, 2.5, None, "3"])
def test_selector_raises_naming_k_when_k_invalid(k):
    with pytest.raises(ValueError) as info:
        TopKRecommendationSelector(k)
    assert str(info.value) == (
        f"Invalid value received for argument `k`. Expected a positive int. Received: k={k!r}"
    )


def test_selector_config_round_trips_when_unbuilt_and_built():
    layer = TopKRecommendationSelector(7)
    assert_config_round_trip(layer, {"k": 7})
    layer(np.ones((2, 9), "float32"))
    assert_config_round_trip(layer, {"k": 7})


def test_selector_survives_keras_save_load_with_identical_outputs(tmp_path):
    def build():
        scores = keras.Input(shape=(None,))
        return keras.Model(scores, TopKRecommendationSelector(3)(scores))

    inputs = np.random.default_rng(1).normal(size=(4, 12)).astype("float32")
    assert_save_load_identical(build, inputs, tmp_path)
