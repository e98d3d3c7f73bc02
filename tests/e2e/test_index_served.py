"""IVF and int8 retrieve models served by the real local tritonserver, called as users do.

The project client (default, chosen and exhaustive ``nprobe``; default and deeper
``rescore``), raw tritonclient with and without ``nprobe`` (concurrent requests of
different ``nprobe`` that Triton batches together), and HTTP/JSON: every answer is
checked against onnxruntime on the same ``model.onnx``, and the exhaustive probe and the
int8 model against the exact model of the same weights.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client import RecommenderClient
from client.errors import InvalidRequestError, RecommenderError
from export.api import ExportOptions, export_model
from export.onnx.convert import load_session
from export.triton.local_server import LocalTritonServer
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import tiny_model

pytestmark = pytest.mark.triton
USERS = [f"u{i:03d}" for i in range(60)]
ITEMS = [f"0{i:04d}" for i in range(3000)]
K = 10


@pytest.fixture(scope="module")
def served(triton_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ivf_served")
    (tmp / "model").mkdir()
    tiny_model(60, 3000, 8).save(tmp / "model" / contract.MODEL_FILE)
    Vocabulary(USERS).save(tmp / "model" / contract.USER_VOCAB_FILE)
    Vocabulary(ITEMS).save(tmp / "model" / contract.ITEM_VOCAB_FILE)
    repo = tmp / "repo"
    options = dict(graph="retrieve", backend="python", k=K)
    exact = export_model(tmp / "model" / contract.MODEL_FILE, repo,
                         ExportOptions(name="exact", **options)).models[0]
    ivf = export_model(tmp / "model" / contract.MODEL_FILE, repo,
                       ExportOptions(name="ivf", index="ivf", nlist=40, **options)).models[0]
    export_model(tmp / "model" / contract.MODEL_FILE, repo,
                 ExportOptions(name="int8", index="int8", **options))
    session = load_session(ivf.version_dir / contract.ONNX_FILE)
    with LocalTritonServer(repo, installation=triton_home) as server:
        yield server, session, ivf, exact


def _local(session, user: str, nprobe: int, exclude: str = contract.PAD_STR) -> list[str]:
    ids, = session.run([contract.TOP_ITEM_IDS], {
        contract.USER_ID: np.array([user], object),
        contract.EXCLUDE_ITEM_IDS: np.array([[exclude]], object),
        contract.NPROBE: np.array([nprobe], np.int64)})
    return [v.decode() if isinstance(v, bytes) else v for v in ids[0]]


def _grpc_infer(client, user: str, nprobe: int | None) -> list[str]:
    inputs = []
    arrays = {contract.USER_ID: np.array([[user.encode()]], object),
              contract.EXCLUDE_ITEM_IDS: np.array([[contract.PAD_STR.encode()]], object)}
    if nprobe is not None:
        arrays[contract.NPROBE] = np.array([[nprobe]], np.int64)
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       "INT64" if array.dtype == np.int64 else "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    answer = client.infer("ivf", inputs).as_numpy(contract.TOP_ITEM_IDS)
    return [v.decode() for v in answer[0]]


def test_project_client_default_chosen_and_exhaustive_nprobe(served):
    server, session, ivf, _ = served
    users = USERS[:8]
    with RecommenderClient(server.grpc_url, "ivf") as client, \
            RecommenderClient(server.grpc_url, "exact") as exact:
        assert client.model_info.index == "ivf" and exact.model_info.index == "exact"
        default = client.recommend(users)
        assert default.item_ids.tolist() == [_local(session, u, 0) for u in users]
        assert client.recommend(users, nprobe=ivf.index["nprobe"]).item_ids.tolist() == \
            default.item_ids.tolist()
        assert client.recommend(users, nprobe=1).item_ids.tolist() == [
            _local(session, u, 1) for u in users]
        everything = client.recommend(users, nprobe=10**6, exclude=[[ITEMS[0]]] * 8)
        want = exact.recommend(users, exclude=[[ITEMS[0]]] * 8)
        assert everything.item_ids.tolist() == want.item_ids.tolist()
        np.testing.assert_allclose(everything.scores, want.scores, rtol=1e-5, atol=1e-6)
        with pytest.raises(InvalidRequestError, match="positive int"):
            client.recommend(users, nprobe=0)
        with pytest.raises(InvalidRequestError, match="only applies to an IVF model"):
            exact.recommend(users, nprobe=3)


def test_raw_grpc_requests_with_different_nprobe_batched_together(served):
    """Triton's dynamic batcher mixes requests: each must keep its own nprobe."""
    server, session, ivf, _ = served
    rng = random.Random(3)
    cases = [(rng.choice(USERS), rng.choice([None, 0, 1, 2, 5, 40, 10**6])) for _ in range(240)]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda c: _grpc_infer(client, *c), cases))
    wrong = [(user, p) for (user, p), got in zip(cases, answers, strict=True)
             if got != _local(session, user, p or 0)]
    assert wrong == []
    assert _grpc_infer(client=grpcclient.InferenceServerClient(server.grpc_url), user=USERS[0],
                       nprobe=None) == _local(session, USERS[0], ivf.index["nprobe"])


def _http(server, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/ivf/infer",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read(), parse_constant=_refuse)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _refuse(constant: str) -> None:
    raise ValueError(f"not valid JSON (RFC 8259): {constant}")


def test_http_json_nprobe_and_bad_nprobe_fail_alone(served):
    server, session, _, _ = served
    body = {"inputs": [
        {"name": "user_id", "shape": [2, 1], "datatype": "BYTES", "data": [USERS[4], "nobody"]},
        {"name": "exclude_item_ids", "shape": [2, 1], "datatype": "BYTES",
         "data": [ITEMS[1], ITEMS[1]]},
        {"name": "nprobe", "shape": [2, 1], "datatype": "INT64", "data": [3, 3]},
    ]}
    status, answer = _http(server, body)
    assert status == 200
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs[contract.NUM_RESULTS] == [K, 0]  # unknown user: an empty row
    assert outputs[contract.TOP_ITEM_IDS][:K] == _local(session, USERS[4], 3, ITEMS[1])
    assert outputs[contract.TOP_SCORES][K:] == [contract.EMPTY_SCORE] * K
    body["inputs"][2] = {"name": "nprobe", "shape": [2, 1], "datatype": "FP32",
                         "data": [3.0, 3.0]}
    status, answer = _http(server, body)
    assert status == 400 and "nprobe" in answer["error"]
    body["inputs"][2] = {"name": "nprobe", "shape": [2, 2], "datatype": "INT64",
                         "data": [1, 1, 1, 1]}
    status, answer = _http(server, body)
    assert status == 400 and "nprobe" in answer["error"]
    with RecommenderClient(server.grpc_url, "ivf") as client:  # the server is still fine
        assert client.recommend([USERS[4]]).num_results.tolist() == [K]


def test_rerank_style_call_on_ivf_model_is_refused_by_the_client(served):
    server, *_ = served
    with RecommenderClient(server.grpc_url, "ivf") as client, \
            pytest.raises(RecommenderError, match="recommend"):
        client.rerank([USERS[0]], [[ITEMS[0]]])


def test_int8_model_served_equals_the_exact_model(served):
    server, *_ = served
    users = USERS[:20] + ["nobody"]
    exclude = [[ITEMS[2], "no-such-item"]] * len(users)
    with RecommenderClient(server.grpc_url, "int8") as client, \
            RecommenderClient(server.http_url, "exact", protocol="http") as exact:
        assert client.model_info.index == "int8"
        want = exact.recommend(users, exclude=exclude)
        for rescore in (None, 16):
            got = client.recommend(users, exclude=exclude, rescore=rescore)
            assert got.item_ids.tolist() == want.item_ids.tolist()
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
        assert got.num_results.tolist()[-1] == 0  # unknown user
        with pytest.raises(InvalidRequestError, match="only applies to an IVF model"):
            client.recommend(users, nprobe=2)
        with pytest.raises(InvalidRequestError, match="only applies to an int8 model"):
            exact.recommend(users, rescore=2)


def test_largest_settings_on_a_full_batch_answer_exactly_and_keep_the_server_up(served):
    """nprobe / rescore far above their maxima, max_batch_size rows: bounded, exact."""
    server, *_ = served
    users = [USERS[i % len(USERS)] for i in range(64)]
    with RecommenderClient(server.grpc_url, "ivf") as ivf_client, \
            RecommenderClient(server.grpc_url, "int8") as int8_client, \
            RecommenderClient(server.grpc_url, "exact") as exact:
        want = exact.recommend(users).item_ids.tolist()
        assert ivf_client.recommend(users, nprobe=2**62).item_ids.tolist() == want
        assert int8_client.recommend(users, rescore=2**62).item_ids.tolist() == want
        assert server.is_running()
