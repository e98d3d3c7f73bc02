"""Serialization checks every public layer must pass (one implementation for all)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np


def assert_config_round_trip(layer: keras.layers.Layer, expected_args: dict) -> None:
    """get_config holds exactly the constructor arguments, and rebuilds an equal layer."""
    config = layer.get_config()
    base_keys = {"name", "trainable", "dtype"}
    assert set(config) - base_keys == set(expected_args)
    for key, value in expected_args.items():
        assert config[key] == value
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(layer)
    assert again.get_config() == config


def assert_save_load_identical(
    build: Callable[[], keras.Model], inputs: object, tmp_path: Path
) -> None:
    """A model using the layer survives .keras save/load with identical outputs."""
    model = build()
    before = model(inputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    after = loaded(inputs)
    before = before if isinstance(before, (list, tuple)) else [before]
    after = after if isinstance(after, (list, tuple)) else [after]
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a))
