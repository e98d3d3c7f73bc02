"""The whole product path against a real tritonserver.

Train (tiny, string raw ids, from a CSV) -> export both graphs -> serve -> the client over
gRPC and HTTP returns exactly the top-k of the trained Keras model and of onnxruntime on
the same inputs, with raw ids in and out. Plus the main job (``kmr-export demo``) as a
user runs it. Without the local server these tests fail (never skip).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from client import AsyncRecommenderClient, RecommenderClient
from export.triton.local_server import LocalTritonServer, TritonInstallation
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.served_stack import onnx_session, reference

pytestmark = pytest.mark.triton

K = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Pipeline:
    server: LocalTritonServer
    repo: Path
    model_path: Path
    names: dict[str, str]
    version_dirs: dict[str, Path]
    users: Vocabulary
    items: Vocabulary
    seen: dict[int, np.ndarray]  # dense user -> dense training items


def _write_csv(path: Path) -> None:
    from kmr.data.synthetic import make_synthetic

    data = make_synthetic(num_users=60, num_items=80, rank=4, interactions_per_user=8, seed=1)
    lines = ["user,item,rating,timestamp"]
    for u, i, t in zip(data.users, data.items, data.timestamps, strict=True):
        lines.append(f"u-{data.user_vocab.ids[u]},item-{data.item_vocab.ids[i]},5,{int(t)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def pipeline(triton_home: TritonInstallation, tmp_path_factory) -> Pipeline:
    from export.api import ExportOptions, export_model
    from kmr.data.files import load_interactions
    from kmr.training.evaluation import holdout_split
    from kmr.training.fit import train_recommender
    from kmr.training.settings import TrainSettings

    root = tmp_path_factory.mktemp("e2e")
    _write_csv(root / "ratings.csv")
    data = load_interactions(root / "ratings.csv")
    settings = TrainSettings(epochs=3, embedding_dim=16, k=K, batch_size=64)
    train_recommender(data, settings, root / "artifacts", verbose=0)
    train = holdout_split(data, 1, seed=settings.seed).train
    seen = {u: train.items[train.users == u] for u in range(data.num_users)}
    model_path = root / "artifacts" / contract.MODEL_FILE
    result = export_model(
        model_path,
        root / "repo",
        ExportOptions(
            name="e2e",
            graph="both",
            k=K,
            backend="python",
            max_batch_size=8,
            max_queue_delay_us=20_000,
        ),
    )
    with LocalTritonServer(root / "repo", installation=triton_home) as server:
        yield Pipeline(
            server=server,
            repo=root / "repo",
            model_path=model_path,
            names={m.graph_kind: m.name for m in result.models},
            version_dirs={m.graph_kind: m.version_dir for m in result.models},
            users=data.user_vocab,
            items=data.item_vocab,
            seen=seen,
        )


@pytest.fixture(scope="module")
def keras_model(pipeline: Pipeline):
    import keras

    import kmr.layers  # noqa: F401 - registers the layers for loading

    return keras.saving.load_model(pipeline.model_path, safe_mode=True)


def _url(pipeline: Pipeline, protocol: str) -> str:
    return pipeline.server.grpc_url if protocol == "grpc" else pipeline.server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rerank_equals_keras_and_onnxruntime_top_k_when_served_with_raw_ids(
    pipeline, keras_model, protocol
):
    rng = np.random.default_rng(3)
    users = rng.choice(len(pipeline.users), size=11, replace=False)
    candidates = np.stack([rng.choice(len(pipeline.items), 20, replace=False) for _ in users])

    positions, scores = (np.asarray(x) for x in keras_model([users, candidates]))
    expected_items = np.take_along_axis(candidates, positions.astype(np.int64), axis=1)
    ort = reference(
        onnx_session(pipeline.version_dirs[contract.GRAPH_RERANK]),
        contract.GRAPH_RERANK,
        users,
        candidates,
        (pipeline.users, pipeline.items),  # the vocabularies are baked into the graph
    )
    np.testing.assert_array_equal(ort[contract.TOP_ITEM_IDS], expected_items)

    raw_users = pipeline.users.to_raw(users).tolist()
    raw_candidates = [pipeline.items.to_raw(row).tolist() for row in candidates]
    with RecommenderClient(
        _url(pipeline, protocol),
        pipeline.names[contract.GRAPH_RERANK],
        protocol=protocol,
        vocabularies=pipeline.repo,
    ) as client:
        result = client.rerank(raw_users, raw_candidates)
    assert result.item_ids.tolist() == [pipeline.items.to_raw(r).tolist() for r in expected_items]
    assert all(isinstance(i, str) and i.startswith("item-") for i in result.item_ids.flat)
    np.testing.assert_array_equal(result.positions, positions)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, ort[contract.TOP_SCORES], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retrieve_equals_keras_full_catalogue_top_k_when_training_items_excluded(
    pipeline, keras_model, protocol
):
    from kmr.training.fit import embedding_scorer

    users = np.arange(0, len(pipeline.users), 7)
    scores = embedding_scorer(keras_model)(users)
    for row, user in enumerate(users):
        scores[row, pipeline.seen[user]] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    expected_scores = np.take_along_axis(scores, expected, axis=1)

    raw_users = pipeline.users.to_raw(users).tolist()
    exclude = [pipeline.items.to_raw(pipeline.seen[u]).tolist() for u in users]
    with RecommenderClient(
        _url(pipeline, protocol),
        pipeline.names[contract.GRAPH_RETRIEVE],
        protocol=protocol,
        vocabularies=pipeline.repo,
    ) as client:
        result = client.recommend(raw_users, exclude=exclude)
    assert result.item_indices is None  # a raw-id model: raw ids in and out, no indices
    assert result.item_ids.tolist() == [pipeline.items.to_raw(r).tolist() for r in expected]
    np.testing.assert_allclose(result.scores, expected_scores, rtol=1e-5, atol=1e-6)
    for row, user in enumerate(users):
        seen = set(pipeline.items.to_raw(pipeline.seen[user]).tolist())
        assert not set(result.item_ids[row].tolist()) & seen


def test_dynamic_batching_merges_requests_when_clients_call_concurrently(pipeline):
    import tritonclient.grpc as grpcclient

    name = pipeline.names[contract.GRAPH_RERANK]

    def counts() -> tuple[int, int]:
        with grpcclient.InferenceServerClient(pipeline.server.grpc_url) as raw:
            stats = raw.get_inference_statistics(name, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    async def burst() -> list:
        async with AsyncRecommenderClient(
            pipeline.server.grpc_url, name, vocabularies=pipeline.repo
        ) as client:
            users = pipeline.users.ids[:32]
            candidates = list(pipeline.items.ids[:10])
            return await asyncio.gather(*(client.rerank([u], [candidates]) for u in users))

    inferences_before, executions_before = counts()
    results = asyncio.run(burst())
    inferences, executions = (
        a - b for a, b in zip(counts(), (inferences_before, executions_before), strict=True)
    )
    assert len(results) == 32 and all(r.item_ids.shape == (1, K) for r in results)
    assert inferences == 32
    assert executions < inferences, f"{executions} executions for {inferences} inferences"


@pytest.mark.slow
def test_main_job_prints_recommendations_and_timings_when_run_like_a_user(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "demo",
            "--epochs",
            "1",
            "--users",
            "2",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "Top-10 unseen items for 2 users" in out
    assert "Re-rank of the first user's list" in out
    assert "stage timings:" in out and "total" in out
    table = [line for line in out.splitlines() if line.split()[:2] == ["0", "1"]]
    assert table, out[-2000:]
