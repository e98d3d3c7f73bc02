from __future__ import annotations

import keras
import numpy as np
import pytest

from kmr.layers import CollaborativeUserItemEmbedding
from tests.support.layer_roundtrip import assert_config_round_trip, assert_save_load_identical

ARGS = {"num_users": 7, "num_items": 11, "embedding_dim": 4, "l2_reg": 1e-3}


def make_layer(**overrides) -> CollaborativeUserItemEmbedding:
    return CollaborativeUserItemEmbedding(**{**ARGS, **overrides})


def test_embedding_shapes_follow_the_spec_when_users_are_1d_and_items_2d():
    layer = make_layer()
    user_emb, item_emb = layer([np.array([0, 6, 3]), np.zeros((3, 5), "int64")])
    assert tuple(user_emb.shape) == (3, 4)
    assert tuple(item_emb.shape) == (3, 5, 4)
    assert user_emb.dtype == item_emb.dtype == "float32"


def test_embedding_squeezes_trailing_unit_axis_when_users_are_b_by_1():
    layer = make_layer()
    user_emb, _ = layer([np.array([[1], [2]]), np.array([[1, 2], [3, 4]])])
    assert tuple(user_emb.shape) == (2, 4)


@pytest.mark.parametrize("item_shape", [(2,), (2, 3), (2, 3, 5)])
def test_embedding_item_output_adds_d_when_items_have_any_shape(item_shape):
    layer = make_layer()
    items = np.arange(np.prod(item_shape)).reshape(item_shape) % ARGS["num_items"]
    _, item_emb = layer([np.array([0, 1]), items])
    assert tuple(item_emb.shape) == item_shape + (4,)


def test_embedding_returns_table_rows_when_ids_are_valid():
    layer = make_layer()
    users, items = np.array([5, 0]), np.array([[10, 2], [2, 2]])
    user_emb, item_emb = layer([users, items])
    user_table = layer.user_embeddings.numpy()
    item_table = layer.item_embeddings.numpy()
    np.testing.assert_array_equal(user_emb.numpy(), user_table[users])
    np.testing.assert_array_equal(item_emb.numpy(), item_table[items])


@pytest.mark.parametrize("bad_user", [-1, 7, 2**40])
def test_embedding_raises_naming_the_id_when_user_out_of_range_eagerly(bad_user):
    layer = make_layer()
    with pytest.raises(ValueError, match=rf"received id {bad_user} .*\[0, 7\)"):
        layer([np.array([0, bad_user]), np.array([[1], [2]])])


@pytest.mark.parametrize("bad_item", [-1, -11, 11])
def test_embedding_raises_naming_the_id_when_item_out_of_range_eagerly(bad_item):
    layer = make_layer()
    with pytest.raises(ValueError, match=rf"item_ids.*received id {bad_item} .*\[0, 11\)"):
        layer([np.array([0]), np.array([[1, bad_item]])])


def test_embedding_gives_zero_rows_never_wrapped_rows_when_ids_invalid_in_a_graph():
    import tensorflow as tf

    layer = make_layer()
    layer.build()

    @tf.function
    def lookup(users, items):
        return layer([users, items])

    user_emb, item_emb = lookup(
        tf.constant([-1, 7, 2**32 + 5, 2**62, 2], tf.int64),
        tf.constant([[-1, -11, 11, 2**32 + 3, -(2**62), 3]], tf.int64),
    )
    np.testing.assert_array_equal(user_emb.numpy()[:4], 0.0)
    np.testing.assert_array_equal(user_emb.numpy()[4], layer.user_embeddings.numpy()[2])
    np.testing.assert_array_equal(item_emb.numpy()[0, :5], 0.0)
    np.testing.assert_array_equal(item_emb.numpy()[0, 5], layer.item_embeddings.numpy()[3])


def test_embedding_l2_loss_matches_numpy_and_scales_when_l2_reg_changes():
    users, items = np.array([1, 2, 3]), np.array([[4, 5], [6, 7], [8, 9]])
    losses = []
    for l2 in (1e-3, 2e-3, 0.0):
        keras.utils.set_random_seed(0)
        layer = make_layer(l2_reg=l2)
        user_emb, item_emb = layer([users, items])
        assert len(layer.losses) == (1 if l2 > 0 else 0)
        total = float(sum(keras.ops.convert_to_numpy(x) for x in layer.losses))
        expected = l2 * (np.sum(user_emb.numpy() ** 2) + np.sum(item_emb.numpy() ** 2)) / 3
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        losses.append(total)
    assert losses[0] > 0
    np.testing.assert_allclose(losses[1], 2 * losses[0], rtol=1e-5)
    assert losses[2] == 0.0


@pytest.mark.parametrize(
    ("argument", "value", "expected"),
    [
        ("num_users", 0, "a positive int"),
        ("num_users", -3, "a positive int"),
        ("num_users", 2.0, "a positive int"),
        ("num_users", "10", "a positive int"),
        ("num_items", 0, "a positive int"),
        ("num_items", True, "a positive int"),
        ("embedding_dim", 0, "a positive int"),
        ("embedding_dim", 1.5, "a positive int"),
        ("l2_reg", -1e-4, "a finite float >= 0"),
        ("l2_reg", float("nan"), "a finite float >= 0"),
        ("l2_reg", "0.1", "a finite float >= 0"),
    ],
)
def test_embedding_raises_naming_argument_when_constructor_argument_invalid(
    argument, value, expected
):
    message = (
        f"Invalid value received for argument `{argument}`. "
        f"Expected {expected}. Received: {argument}={value!r}"
    )
    with pytest.raises(ValueError) as info:
        make_layer(**{argument: value})
    assert str(info.value) == message


def test_embedding_config_round_trips_when_unbuilt():
    assert_config_round_trip(make_layer(), ARGS)


def test_embedding_config_round_trips_without_weights_when_built():
    layer = make_layer()
    layer([np.array([0]), np.array([[1]])])
    assert_config_round_trip(layer, ARGS)


def test_embedding_survives_keras_save_load_with_identical_outputs(tmp_path):
    def build():
        users = keras.Input(shape=(), dtype="int64")
        items = keras.Input(shape=(None,), dtype="int64")
        user_emb, item_emb = make_layer()([users, items])
        return keras.Model([users, items], [user_emb, item_emb])

    inputs = [np.array([0, 3, 6]), np.array([[1, 2], [3, 4], [10, 0]])]
    assert_save_load_identical(build, inputs, tmp_path)
