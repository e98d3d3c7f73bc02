"""The spec's own complete model, exported by the CLI and served by the real tritonserver."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.cli import main
from export.triton.local_server import LocalTritonServer
from kmr import contract
from tests.export.test_user_models import _randomize, _spec_model_block

pytestmark = pytest.mark.triton
SPEC = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_8bd999f5ab1a1f1d.txt"


def _infer(client, model: str, **arrays: np.ndarray) -> dict:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, np.int64))
        inputs.append(tensor)
    result = client.infer(model, inputs)
    kind = contract.GRAPH_RERANK if model.endswith("rerank") else contract.GRAPH_RETRIEVE
    return {name: result.as_numpy(name) for name in contract.OUTPUTS[kind]}


def test_spec_model_served_answers_like_the_users_model_when_exported_by_cli(triton_home,
                                                                             tmp_path):
    scope: dict = {}
    exec(compile(_spec_model_block(), str(SPEC), "exec"), scope)  # noqa: S102 - our spec
    model = _randomize(scope["model"])
    model.save(tmp_path / "seed_model.keras")
    assert main(["export", "--model", str(tmp_path / "seed_model.keras"), "--repo",
                 str(tmp_path / "repo"), "--name", "seed", "--graph", "both",
                 "--backend", "python"]) == 0
    rng = np.random.default_rng(11)
    users = rng.integers(0, 1000, 3)
    items = rng.integers(0, 5000, (3, 100))
    positions, scores = model([users.reshape(-1, 1).astype("int32"), items.astype("int32")])
    user_table, item_table = (w.numpy() for w in model.get_layer(
        "collaborative_user_item_embedding").weights)
    full = user_table[users] @ item_table.T / np.sqrt(32)  # the spec's sqrt_dim scores
    with LocalTritonServer(tmp_path / "repo", installation=triton_home) as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        rerank = _infer(client, "seed_rerank", user_id=users.reshape(-1, 1), item_ids=items)
        short = _infer(client, "seed_rerank", user_id=users.reshape(-1, 1),
                       item_ids=items[:, :7])
        retrieve = _infer(client, "seed_retrieve", user_id=users.reshape(-1, 1),
                          exclude_item_ids=np.full((3, 1), -1))
    np.testing.assert_array_equal(rerank[contract.TOP_POSITIONS], np.asarray(positions))
    np.testing.assert_allclose(rerank[contract.TOP_SCORES], np.asarray(scores), rtol=1e-5,
                               atol=1e-6)
    assert (short[contract.TOP_POSITIONS][:, 7:] == -1).all()
    assert (short[contract.TOP_POSITIONS][:, :7] >= 0).all()
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(retrieve[contract.TOP_ITEM_IDS], want)
    np.testing.assert_allclose(retrieve[contract.TOP_SCORES],
                               np.take_along_axis(full, want, axis=1), rtol=1e-5, atol=1e-5)
    assert isinstance(model, keras.Model)
