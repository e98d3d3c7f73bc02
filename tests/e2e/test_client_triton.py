"""End-to-end tests of the client against a real local tritonserver (python backend).

The served graphs are the tiny contract-following ONNX stand-ins of
tests/e2e/test_local_triton.py (built with onnx.helper, served by
export/triton/python_backend/model.py with configs from export/triton/config.py); expected
answers are computed here with numpy from the same tables. The server comes from
scripts/setup_triton.sh; without it these tests fail (never skip).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import (
    AsyncRecommenderClient,
    InferenceError,
    ModelAdmin,
    ModelNotFoundError,
    RecommenderClient,
    ServerUnavailableError,
    UnknownRawIdError,
)
from export.triton.local_server import LocalTritonServer, TritonInstallation
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.handmade_graphs import (
    ITEM_TABLE,
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    NUM_ITEMS,
    NUM_USERS,
    USER_TABLE,
    K,
    add_model,
    build_rerank_onnx,
    build_retrieve_onnx,
)
from tests.support.served_stack import onnx_session, reference

pytestmark = pytest.mark.triton

RERANK, RETRIEVE = "client_rerank", "client_retrieve"
MAX_BATCH = 4  # small, so a 9-user request is split into 3 chunks
USER_IDS = [f"user-{i}" for i in range(NUM_USERS)]
ITEM_IDS = [1000 + 7 * i for i in range(NUM_ITEMS)]
PROTOCOLS = ("grpc", "http")


def expected_top(user: int, items: list[int], k: int) -> tuple[list[int], np.ndarray]:
    """Dense item indices and scores of the best k of ``items`` for ``user`` (numpy)."""
    scores = ITEM_TABLE[items] @ USER_TABLE[user]
    order = np.argsort(-scores, kind="stable")[:k]
    return [items[i] for i in order], scores[order]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client_repository")
    for name, kind, graph in (
        (RERANK, contract.GRAPH_RERANK, build_rerank_onnx()),
        (RETRIEVE, contract.GRAPH_RETRIEVE, build_retrieve_onnx()),
    ):
        model_dir = add_model(root, name, kind, graph, max_batch_size=MAX_BATCH)
        Vocabulary(USER_IDS).save(model_dir / "1" / contract.USER_VOCAB_FILE)
        Vocabulary(ITEM_IDS).save(model_dir / "1" / contract.ITEM_VOCAB_FILE)
    return root


@pytest.fixture(scope="module")
def server(triton_home: TritonInstallation, repository: Path):
    with LocalTritonServer(repository, installation=triton_home,
                           model_control_mode="explicit") as running:
        yield running


def url_of(server: LocalTritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_info_matches_exported_config_when_read_from_server(server, protocol) -> None:
    with RecommenderClient(url_of(server, protocol), RERANK, protocol=protocol) as client:
        info = client.model_info
    # Table sizes are per-version facts (export_manifest.json), not in the model config.
    assert (info.graph_kind, info.k, info.num_users, info.num_items, info.id_kind) == (
        contract.GRAPH_RERANK, K, None, None, contract.IDS_INDEX)
    assert (info.max_batch_size, info.max_candidates, info.max_exclude) == (
        MAX_BATCH, MAX_CANDIDATES, MAX_EXCLUDE)
    assert info.inputs[contract.USER_ID].dims == (1,)


def test_get_model_config_is_identical_when_read_over_grpc_and_http(server) -> None:
    configs = []
    for protocol in PROTOCOLS:
        with RecommenderClient(url_of(server, protocol), RETRIEVE, protocol=protocol) as client:
            configs.append(client.get_model_config(as_json=True))
    assert configs[0] == configs[1]
    assert configs[0]["parameters"][contract.PARAM_K] == {"string_value": str(K)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rerank_matches_numpy_in_order_when_batch_spans_several_chunks(
    server, repository, protocol
) -> None:
    rng = np.random.default_rng(1)
    users = [int(u) for u in rng.integers(0, NUM_USERS, size=9)]
    candidates = [[int(i) for i in rng.choice(NUM_ITEMS, size=8, replace=False)] for _ in users]
    with RecommenderClient(url_of(server, protocol), RERANK, protocol=protocol,
                           vocabularies=repository) as client:
        result = client.rerank(
            [USER_IDS[u] for u in users],
            [[ITEM_IDS[i] for i in row] for row in candidates],
            k=3,
        )
        assert client.stats.calls == 1 + 3  # config + ceil(9 / 4) chunks
    assert result.item_ids.shape == result.scores.shape == result.positions.shape == (9, 3)
    for b, (user, row) in enumerate(zip(users, candidates, strict=True)):
        top, scores = expected_top(user, row, 3)
        assert result.item_ids[b].tolist() == [ITEM_IDS[i] for i in top]
        assert result.item_indices[b].tolist() == top
        assert [row[p] for p in result.positions[b]] == top
        np.testing.assert_allclose(result.scores[b], scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rerank_pads_with_none_and_minus_inf_when_fewer_candidates_than_k(
    server, repository, protocol
) -> None:
    with RecommenderClient(url_of(server, protocol), RERANK, protocol=protocol,
                           vocabularies=repository) as client:
        result = client.rerank([USER_IDS[0]], [[ITEM_IDS[3], ITEM_IDS[4]]])
    assert result.item_ids.shape == (1, K)
    assert result.item_ids[0, 2:].tolist() == [None] * (K - 2)
    assert np.isneginf(result.scores[0, 2:]).all()
    assert result.positions[0, 2:].tolist() == [-1] * (K - 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recommend_matches_numpy_and_skips_excluded_when_exclusions_differ(
    server, repository, protocol
) -> None:
    users = [0, 3, 6, 1, 2]
    full = [expected_top(u, list(range(NUM_ITEMS)), 2)[0] for u in users]
    exclude = [full[0], [], full[2][:1], [], full[4]]  # ragged, per user
    with RecommenderClient(url_of(server, protocol), RETRIEVE, protocol=protocol,
                           vocabularies=repository) as client:
        result = client.recommend(
            [USER_IDS[u] for u in users],
            k=4,
            exclude=[[ITEM_IDS[i] for i in row] for row in exclude],
        )
        dense = client.recommend(users, k=4, raw_ids=False)
    for b, user in enumerate(users):
        allowed = [i for i in range(NUM_ITEMS) if i not in exclude[b]]
        top, scores = expected_top(user, allowed, 4)
        assert result.item_indices[b].tolist() == top
        assert result.item_ids[b].tolist() == [ITEM_IDS[i] for i in top]
        np.testing.assert_allclose(result.scores[b], scores, rtol=1e-5, atol=1e-5)
        assert dense.item_ids[b].tolist() == expected_top(user, list(range(NUM_ITEMS)), 4)[0]
    assert result.positions is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_raises_model_not_found_when_model_is_unknown(server, protocol) -> None:
    with RecommenderClient(url_of(server, protocol), "no_such_model", protocol=protocol) as c:
        with pytest.raises(ModelNotFoundError, match="no_such_model"):
            _ = c.model_info
        assert c.stats.retries == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_raises_unknown_raw_id_before_sending_when_user_is_not_in_vocabulary(
    server, repository, protocol
) -> None:
    with RecommenderClient(url_of(server, protocol), RETRIEVE, protocol=protocol,
                           vocabularies=repository) as client:
        with pytest.raises(UnknownRawIdError, match="Unknown user id 'stranger'"):
            client.recommend(["stranger"])
        assert client.stats.calls == 1  # the config only


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_rejection_is_inference_error_without_retry_when_limits_are_bypassed(
    server, protocol
) -> None:
    with RecommenderClient(url_of(server, protocol), RERANK, protocol=protocol) as client:
        # Pretend the model accepts more candidates, so the server is the one to refuse.
        client._info = dataclasses.replace(client.model_info, max_candidates=10 * MAX_CANDIDATES)
        with pytest.raises(InferenceError, match=str(MAX_CANDIDATES)) as info:
            client.rerank([0], [list(range(NUM_ITEMS)) * 2], raw_ids=False)
        assert client.stats.retries == 0
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_retries_then_raises_unavailable_when_nothing_listens(protocol) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with RecommenderClient(f"127.0.0.1:{port}", RERANK, protocol=protocol, retries=2,
                           backoff=0.01, timeout=2.0) as client:
        with pytest.raises(ServerUnavailableError):
            _ = client.model_info
        assert (client.stats.calls, client.stats.retries, client.stats.failures) == (3, 2, 1)


def test_async_client_matches_sync_client_when_served(server, repository) -> None:
    users = [USER_IDS[u] for u in (5, 0, 2, 3, 1, 4)]

    async def main():
        async with AsyncRecommenderClient(server.grpc_url, RETRIEVE,
                                          vocabularies=repository) as client:
            return await asyncio.gather(
                client.recommend(users, k=3),
                client.recommend(users[:1], k=2, exclude=[[ITEM_IDS[0]]]),
            )

    many, one = asyncio.run(main())
    with RecommenderClient(server.grpc_url, RETRIEVE, vocabularies=repository) as client:
        expected = client.recommend(users, k=3)
    np.testing.assert_array_equal(many.item_indices, expected.item_indices)
    np.testing.assert_allclose(many.scores, expected.scores)
    assert one.item_ids.shape == (1, 2) and ITEM_IDS[0] not in one.item_ids[0].tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_unloads_and_reloads_model_when_server_is_explicit(server, protocol) -> None:
    url = url_of(server, protocol)
    with ModelAdmin(url, protocol=protocol) as admin:
        states = {m.name: m.state for m in admin.list_models()}
        assert states == {RERANK: "READY", RETRIEVE: "READY"}
        admin.unload_model(RETRIEVE)
        with RecommenderClient(url, RETRIEVE, protocol=protocol, retries=0) as client:
            with pytest.raises(ModelNotFoundError):
                client.recommend([0], raw_ids=False)
        admin.load_model(RETRIEVE)
        assert admin.wait_until_ready(RETRIEVE, "1", timeout=60) >= 0
        assert admin.is_model_ready(RETRIEVE, "1")
        with RecommenderClient(url, RETRIEVE, protocol=protocol) as client:
            assert client.recommend([0], k=1, raw_ids=False).item_ids.shape == (1, 1)
        with pytest.raises(ModelNotFoundError, match="not ready after"):
            admin.wait_until_ready(RETRIEVE, "7", timeout=0.5, interval=0.1)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_prints_titled_table_when_querying_served_model(server, repository, tmp_path):
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title\n" + "".join(f"{i},Film {i}\n" for i in ITEM_IDS))
    done = _run_cli("--url", server.grpc_url, "--model", RETRIEVE, "--user", USER_IDS[2],
                    "--user", USER_IDS[4], "--k", "3", "--vocab-dir", str(repository),
                    "--items-csv", str(movies))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["user", "rank", "item", "title", "score"]
    assert len(lines) == 1 + 2 * 3
    top = expected_top(2, list(range(NUM_ITEMS)), 1)[0][0]
    assert lines[1].split()[:5] == [USER_IDS[2], "1", str(ITEM_IDS[top]), "Film",
                                    str(ITEM_IDS[top])]


def test_cli_exits_1_without_traceback_when_user_is_unknown(server, repository) -> None:
    done = _run_cli("--url", server.http_url, "--protocol", "http", "--model", RERANK,
                    "--user", "nobody", "--candidates", str(ITEM_IDS[0]),
                    "--vocab-dir", str(repository))
    assert done.returncode == 1
    assert "Unknown user id 'nobody'" in done.stderr and "Traceback" not in done.stderr


# -- with the real export: trained-model graphs and published vocabularies ------------------
EXPORT_USERS = [f"alice-{i}" for i in range(12)]
EXPORT_ITEMS = [5000 + 3 * i for i in range(40)]
EXPORT_K = 5


def _export_version(repo: Path, artifacts: Path, seed: int) -> dict[str, Path]:
    """Exports a tiny model (both graphs) as a dense-index model with vocabulary files.

    These tests cover the client's vocabulary path (``--ids index``): raw ids mapped by
    the files of the version that answered. Raw-id graphs: tests/e2e/test_raw_ids*.py and
    test_end_to_end.py.
    """
    from export.api import ExportOptions, export_model
    from tests.support.export_helpers import save_artifacts, tiny_model

    model_path = save_artifacts(tiny_model(len(EXPORT_USERS), len(EXPORT_ITEMS), 4, seed=seed),
                                artifacts / f"seed{seed}")
    Vocabulary(EXPORT_USERS).save(model_path.parent / contract.USER_VOCAB_FILE)
    Vocabulary(EXPORT_ITEMS).save(model_path.parent / contract.ITEM_VOCAB_FILE)
    options = ExportOptions(name="mf", graph="both", k=EXPORT_K, backend="python",
                            max_batch_size=MAX_BATCH, ids="index")
    result = export_model(model_path, repo, options)
    return {m.graph_kind: m.version_dir for m in result.models}


@pytest.fixture(scope="module")
def exported(triton_home: TritonInstallation, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    versions = _export_version(root / "repo", root / "artifacts", seed=0)
    with LocalTritonServer(
        root / "repo", installation=triton_home, model_control_mode="explicit"
    ) as running:
        yield running, root, versions


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_matches_onnxruntime_when_model_comes_from_export(exported, protocol) -> None:
    server, root, versions = exported
    url = url_of(server, protocol)
    users = [3, 0, 11, 7, 7, 1]
    candidates = np.array([[(u * 5 + j * 7) % 40 for j in range(9)] for u in users])
    with RecommenderClient(
        url, "mf_rerank", protocol=protocol, vocabularies=root / "repo"
    ) as client:
        reranked = client.rerank(
            [EXPORT_USERS[u] for u in users], [[EXPORT_ITEMS[i] for i in row] for row in candidates]
        )
    expected = reference(
        onnx_session(versions[contract.GRAPH_RERANK]), contract.GRAPH_RERANK, users, candidates
    )
    np.testing.assert_array_equal(reranked.item_indices, expected[contract.TOP_ITEM_IDS])
    np.testing.assert_array_equal(reranked.positions, expected[contract.TOP_POSITIONS])
    np.testing.assert_allclose(reranked.scores, expected[contract.TOP_SCORES], atol=1e-6)
    assert reranked.item_ids[0].tolist() == [
        EXPORT_ITEMS[i] for i in expected[contract.TOP_ITEM_IDS][0]
    ]

    with RecommenderClient(
        url, "mf_retrieve", protocol=protocol, vocabularies=root / "repo"
    ) as client:
        retrieved = client.recommend(
            [EXPORT_USERS[u] for u in users], k=3, exclude=[[EXPORT_ITEMS[u]] for u in users]
        )
    expected = reference(
        onnx_session(versions[contract.GRAPH_RETRIEVE]),
        contract.GRAPH_RETRIEVE,
        users,
        np.array(users)[:, None],
    )
    np.testing.assert_array_equal(retrieved.item_indices, expected[contract.TOP_ITEM_IDS][:, :3])
    np.testing.assert_allclose(retrieved.scores, expected[contract.TOP_SCORES][:, :3], atol=1e-5)


def test_client_follows_hot_update_when_new_version_is_loaded(exported) -> None:
    server, root, versions = exported
    users = [0, 5, 9]
    with RecommenderClient(server.grpc_url, "mf_retrieve", vocabularies=root / "repo") as client:
        before = client.recommend([EXPORT_USERS[u] for u in users])
        new = _export_version(root / "repo", root / "artifacts", seed=1)
        assert new[contract.GRAPH_RETRIEVE].name == "2"
        with ModelAdmin(server.grpc_url) as admin:
            admin.load_model("mf_retrieve")
            admin.wait_until_ready("mf_retrieve", "2", timeout=60)
            assert not admin.is_model_ready("mf_retrieve", "1")  # policy: latest version only
        client.fetch_model_info(refresh=True)
        after = client.recommend([EXPORT_USERS[u] for u in users])
    # No exclusions: reference() feeds one -1 pad column, as the client does.
    expected = reference(onnx_session(new[contract.GRAPH_RETRIEVE]), contract.GRAPH_RETRIEVE, users)
    np.testing.assert_array_equal(after.item_indices, expected[contract.TOP_ITEM_IDS])
    assert not np.array_equal(after.scores, before.scores)
