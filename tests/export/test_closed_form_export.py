"""A closed-form ("low_rank_ridge") model exports and serves the ranking of its tables."""

from __future__ import annotations

import numpy as np

from kmr import contract
from kmr.data.synthetic import make_synthetic
from kmr.training.fit import TrainSettings, embedding_scorer, train_recommender
from tests.support.served_stack import K, export_version, onnx_session, reference


def test_closed_form_model_exports_and_onnxruntime_ranks_like_its_tables(tmp_path):
    data = make_synthetic(num_users=50, num_items=70, rank=4, interactions_per_user=8, seed=2)
    settings = TrainSettings(objective="low_rank_ridge", embedding_dim=16, k=K)
    result = train_recommender(data, settings, tmp_path / "artifacts", verbose=0)
    # export_model checks its graphs against the saved model before publishing.
    versions = export_version(tmp_path / "artifacts" / contract.MODEL_FILE, tmp_path / "repo")
    users = np.arange(data.num_users)
    served = reference(onnx_session(versions[contract.GRAPH_RETRIEVE]),
                       contract.GRAPH_RETRIEVE, users)
    scores = embedding_scorer(result.model)(users)
    expected = np.sort(scores, axis=1)[:, ::-1][:, :K]
    np.testing.assert_allclose(served[contract.TOP_SCORES], expected, rtol=1e-5, atol=1e-6)
    picked = np.take_along_axis(scores, served[contract.TOP_ITEM_IDS], axis=1)
    np.testing.assert_allclose(picked, expected, rtol=1e-5, atol=1e-6)
