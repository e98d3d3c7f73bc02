from __future__ import annotations

import keras
import numpy as np
import pytest

from kmr.layers import NormalizedDotProductSimilarity
from tests.support.layer_roundtrip import assert_config_round_trip, assert_save_load_identical

rng = np.random.default_rng(0)


def reference(a: np.ndarray, b: np.ndarray, normalization: str = "sqrt_dim") -> np.ndarray:
    """Loop-based reference: no broadcasting tricks shared with the layer."""
    a, b = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    out = np.empty(a.shape[:-1])
    for index in np.ndindex(out.shape):
        x, y = a[index], b[index]
        if normalization == "cosine":
            denom = np.linalg.norm(x) * np.linalg.norm(y)
            out[index] = 0.0 if denom == 0 else float(x @ y) / denom
        else:
            out[index] = float(x @ y) / np.sqrt(x.shape[-1])
    return out


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "out_shape"),
    [
        ((4, 1, 8), (4, 6, 8), (4, 6)),  # the spec's user-vs-candidates shape
        ((4, 6, 8), (4, 1, 8), (4, 6)),
        ((4, 1, 8), (1, 6, 8), (4, 6)),  # user vs the whole catalogue
        ((4, 6, 8), (4, 6, 8), (4, 6)),  # pairwise, no singleton axis
        ((4, 8), (4, 8), (4,)),
        ((3, 1, 8), (6, 8), (3, 6)),
    ],
)
@pytest.mark.parametrize("normalization", ["sqrt_dim", "cosine"])
def test_similarity_matches_loop_reference_when_shapes_broadcast(
    a_shape, b_shape, out_shape, normalization
):
    a = rng.normal(size=a_shape).astype("float32")
    b = rng.normal(size=b_shape).astype("float32")
    scores = NormalizedDotProductSimilarity(normalization)([a, b])
    assert tuple(scores.shape) == out_shape
    assert scores.dtype == "float32"
    np.testing.assert_allclose(scores.numpy(), reference(a, b, normalization), rtol=1e-5, atol=1e-5)


def test_similarity_symbolic_shape_matches_spec_when_candidates_are_100():
    a = keras.Input(shape=(1, 32))
    b = keras.Input(shape=(100, 32))
    assert tuple(NormalizedDotProductSimilarity()([a, b]).shape) == (None, 100)


def test_similarity_cosine_scores_zero_when_a_vector_is_zero():
    a = np.zeros((1, 1, 4), "float32")
    b = np.ones((1, 3, 4), "float32")
    np.testing.assert_array_equal(NormalizedDotProductSimilarity("cosine")([a, b]).numpy(), 0.0)


def test_similarity_raises_naming_argument_when_normalization_unknown():
    with pytest.raises(ValueError) as info:
        NormalizedDotProductSimilarity("l1")
    assert str(info.value) == (
        "Invalid value received for argument `normalization`. "
        "Expected one of ('sqrt_dim', 'cosine'). Received: normalization='l1'"
    )


def test_similarity_raises_when_inputs_are_not_a_pair():
    with pytest.raises(ValueError, match=r"expects inputs \[a, b\]"):
        NormalizedDotProductSimilarity()(np.ones((2, 3), "float32"))


@pytest.mark.parametrize("normalization", ["sqrt_dim", "cosine"])
def test_similarity_config_round_trips_when_unbuilt_and_built(normalization):
    layer = NormalizedDotProductSimilarity(normalization)
    assert_config_round_trip(layer, {"normalization": normalization})
    layer([np.ones((1, 1, 2), "float32"), np.ones((1, 3, 2), "float32")])
    assert_config_round_trip(layer, {"normalization": normalization})


def test_similarity_survives_keras_save_load_with_identical_outputs(tmp_path):
    def build():
        a = keras.Input(shape=(1, 8))
        b = keras.Input(shape=(None, 8))
        return keras.Model([a, b], NormalizedDotProductSimilarity("cosine")([a, b]))

    inputs = [
        rng.normal(size=(3, 1, 8)).astype("float32"),
        rng.normal(size=(3, 5, 8)).astype("float32"),
    ]
    assert_save_load_identical(build, inputs, tmp_path)
