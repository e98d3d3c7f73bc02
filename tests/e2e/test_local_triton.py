"""End-to-end tests against a real tritonserver (scripts/setup_triton.sh) with model.py.

The served graphs here are tiny stand-ins built with ``onnx.helper`` that follow the
contract's names, dtypes, shapes and semantics (-1 candidates -> id -1 / score -inf,
results padded to k); the real graphs come from the export.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.triton import config as tc
from export.triton.local_server import (
    LocalTritonServer,
    TritonInstallation,
    TritonNotInstalledError,
    TritonServerError,
    find_tritonserver,
)
from kmr import contract
from tests.support.compare import assert_same_results
from tests.support.handmade_graphs import (
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    MODEL_PY,
    NUM_ITEMS,
    NUM_USERS,
    K,
    add_model,
    build_rerank_onnx,
    build_retrieve_onnx,
)

RERANK, RETRIEVE = "mf_rerank", "mf_retrieve"
RNG = np.random.default_rng(1)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _infer(client: grpcclient.InferenceServerClient, model: str, **arrays: np.ndarray) -> dict:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return {out: result.as_numpy(out) for out in contract.OUTPUTS[_kind(model)]}


def _kind(model: str) -> str:
    return contract.GRAPH_RERANK if model == RERANK else contract.GRAPH_RETRIEVE


def _assert_same(served: dict, expected: dict) -> None:
    assert_same_results(served, expected, rtol=1e-6, atol=1e-6)


def _group_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (server + its stubs)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graphs() -> dict[str, onnx.ModelProto]:
    return {RERANK: build_rerank_onnx(), RETRIEVE: build_retrieve_onnx()}


@pytest.fixture(scope="module")
def server(triton_home: TritonInstallation, graphs, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    # A long queue delay makes the dynamic batcher group concurrent requests reliably.
    add_model(repository, RERANK, contract.GRAPH_RERANK, graphs[RERANK], max_queue_delay_us=50_000)
    add_model(repository, RETRIEVE, contract.GRAPH_RETRIEVE, graphs[RETRIEVE])
    started = time.monotonic()
    with LocalTritonServer(repository, installation=triton_home) as running:
        print(f"\n[measure] server start to ready: {time.monotonic() - started:.2f} s")
        yield running


@pytest.fixture()
def client(server: LocalTritonServer):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


# -- tests ---------------------------------------------------------------------------------
def test_find_tritonserver_raises_setup_hint_when_home_is_empty(tmp_path: Path) -> None:
    with pytest.raises(TritonNotInstalledError, match="scripts/setup_triton.sh"):
        find_tritonserver(tmp_path)


def test_model_py_parameter_keys_match_contract_when_imported(monkeypatch) -> None:
    # model.py cannot import kmr; its spelled-out keys must agree with the contract.
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("pb"))
    spec = importlib.util.spec_from_file_location("kmr_python_backend_model", MODEL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAM_GRAPH_KIND == contract.PARAM_GRAPH_KIND
    assert module.PARAM_ID_KIND == contract.PARAM_ID_KIND
    assert module.ID_KINDS == contract.ID_KINDS
    assert (module.PAD_INT, module.PAD_STR) == (contract.PAD_INT, contract.PAD_STR)
    assert module.PARAM_K == contract.PARAM_K
    assert module.PARAM_MAX_CANDIDATES == contract.PARAM_MAX_CANDIDATES
    assert module.PARAM_MAX_EXCLUDE == contract.PARAM_MAX_EXCLUDE
    assert module.PARAM_INTRA_OP_THREADS == tc.PARAM_INTRA_OP_THREADS
    assert (module.GRAPH_RERANK, module.GRAPH_RETRIEVE) == contract.GRAPH_KINDS
    assert module.DEFAULT_ONNX_FILE == contract.ONNX_FILE
    assert module.PAD_ID == contract.INVALID_ID


def test_server_is_ready_when_started(server: LocalTritonServer, client) -> None:
    assert server.is_running()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(RERANK) and client.is_model_ready(RETRIEVE)
    config = client.get_model_config(RERANK).config
    assert tc.model_parameters(config)[contract.PARAM_K] == K
    assert server.http_url.startswith("127.0.0.1:") and server.grpc_url.startswith("127.0.0.1:")
    assert "Started GRPCInferenceService" in server.log_text()


def test_rerank_matches_onnxruntime_when_served(client, graphs) -> None:
    users = np.array([0, 3, 6], np.int64)
    for width in (12, 3):  # more and fewer candidates than k (padding to k)
        items = RNG.integers(0, NUM_ITEMS, size=(3, width), dtype=np.int64)
        expected = dict(
            zip(
                contract.OUTPUTS[contract.GRAPH_RERANK],
                _session(graphs[RERANK]).run(None, {"user_id": users, "item_ids": items}),
                strict=True,
            )
        )
        served = _infer(client, RERANK, user_id=users[:, None], item_ids=items)
        _assert_same(served, expected)
        assert served[contract.TOP_SCORES].shape == (3, K)
    assert (served[contract.TOP_ITEM_IDS][:, 3:] == contract.INVALID_ID).all()


def test_retrieve_matches_onnxruntime_when_exclude_is_given_or_absent(client, graphs) -> None:
    users = np.array([1, 2], np.int64)
    exclude = np.array([[4, 9, -1], [-1, -1, -1]], np.int64)
    sess = _session(graphs[RETRIEVE])
    expected = dict(
        zip(
            contract.OUTPUTS[contract.GRAPH_RETRIEVE],
            sess.run(None, {"user_id": users, "exclude_item_ids": exclude}),
            strict=True,
        )
    )
    served = _infer(client, RETRIEVE, user_id=users[:, None], exclude_item_ids=exclude)
    _assert_same(served, expected)

    no_exclude = np.full((2, 1), -1, np.int64)
    expected = dict(
        zip(
            contract.OUTPUTS[contract.GRAPH_RETRIEVE],
            sess.run(None, {"user_id": users, "exclude_item_ids": no_exclude}),
            strict=True,
        )
    )
    _assert_same(_infer(client, RETRIEVE, user_id=users[:, None]), expected)


@pytest.mark.parametrize(
    ("model", "arrays", "message"),
    [
        (RERANK, dict(user_id=[[0]], item_ids=[list(range(21))]), "21 candidates"),
        (RETRIEVE, dict(user_id=[[0]], exclude_item_ids=[[0] * 13]), f"at most {MAX_EXCLUDE}"),
        (RERANK, dict(user_id=[0], item_ids=[[1, 2]]), "unexpected shape for input 'user_id'"),
    ],
)
def test_request_gets_its_own_error_when_it_is_invalid(client, model, arrays, message) -> None:
    with pytest.raises(InferenceServerException) as info:
        _infer(client, model, **{k: np.array(v, np.int64) for k, v in arrays.items()})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("model", "arrays"),
    [
        (RERANK, dict(user_id=[[999]], item_ids=[[1, 2]])),
        (RERANK, dict(user_id=[[-1]], item_ids=[[1, 2]])),
        (RERANK, dict(user_id=[[0]], item_ids=[[1, -3]])),
        (RERANK, dict(user_id=[[0]], item_ids=[[30]])),
        (RETRIEVE, dict(user_id=[[0]], exclude_item_ids=[[-2]])),
        (RETRIEVE, dict(user_id=[[2**62]], exclude_item_ids=[[-1]])),
    ],
)
def test_out_of_range_ids_are_answered_like_production_when_sent(client, graphs, model,
                                                                 arrays) -> None:
    # Id values are the graph's business on every backend: no per-request error, the
    # same answer as onnxruntime (empty row for a bad user, a bad candidate never ranked).
    feed = {k: np.array(v, np.int64) for k, v in arrays.items()}
    served = _infer(client, model, **feed)
    reference = _session(graphs[model]).run(
        None, {**feed, contract.USER_ID: feed[contract.USER_ID][:, 0]})
    _assert_same(served, dict(zip(contract.OUTPUTS[_kind(model)], reference, strict=True)))


def test_good_requests_succeed_when_a_bad_one_is_batched_with_them(
    server: LocalTritonServer, graphs
) -> None:
    sess = _session(graphs[RERANK])
    jobs = []
    for i in range(12):
        width = 1 + i % 7  # ragged: different N in one execution
        items = RNG.integers(0, NUM_ITEMS, size=(1, width), dtype=np.int64)
        jobs.append((np.array([[i % NUM_USERS]], np.int64), items))
    bad_index = 5  # too many candidates: model.py refuses it inside the shared execution
    jobs[bad_index] = (jobs[bad_index][0], np.zeros((1, MAX_CANDIDATES + 1), np.int64))
    before = _stats(server, RERANK)

    def call(job):
        users, items = job
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            try:
                return _infer(c, RERANK, user_id=users, item_ids=items)
            except InferenceServerException as e:
                return e

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(call, jobs))

    for i, ((users, items), result) in enumerate(zip(jobs, results, strict=True)):
        if i == bad_index:
            assert isinstance(result, InferenceServerException)
            assert f"{MAX_CANDIDATES + 1} candidates" in str(result)
            continue
        assert not isinstance(result, Exception), result
        outs = sess.run(None, {"user_id": users[:, 0], "item_ids": items})
        _assert_same(result, dict(zip(contract.OUTPUTS[contract.GRAPH_RERANK], outs, strict=True)))
    after = _stats(server, RERANK)
    requests = after[0] - before[0]
    executions = after[1] - before[1]
    print(f"\n[measure] {requests} concurrent requests -> {executions} executions")
    assert requests == len(jobs)
    assert executions < requests  # ragged requests shared executions


def _stats(server: LocalTritonServer, model: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        stats = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_round_trip_latency_is_measured_when_served(client) -> None:
    users = np.array([[2]], np.int64)
    items = np.arange(10, dtype=np.int64)[None, :]
    for _ in range(5):
        _infer(client, RERANK, user_id=users, item_ids=items)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        _infer(client, RETRIEVE, user_id=users)
        times.append(time.perf_counter() - t0)
    print(f"\n[measure] gRPC round trip retrieve B=1: median {np.median(times) * 1e3:.2f} ms")
    assert np.median(times) < 1.0


def test_wait_until_ready_raises_server_error_when_model_is_broken(
    triton_home: TritonInstallation, tmp_path: Path
) -> None:
    add_model(tmp_path, "broken", contract.GRAPH_RERANK, b"this is not an onnx model")
    server = LocalTritonServer(tmp_path, installation=triton_home, startup_timeout=60)
    server.start()
    try:
        with pytest.raises(TritonServerError) as info:
            server.wait_until_ready()
    finally:
        server.stop()
    message = str(info.value)
    assert "failed to load 'broken'" in message
    assert "model.onnx" in message  # onnxruntime's own text, relayed by the server
    assert "failed to load 'broken'" in server.log_text()


def test_stop_leaves_no_process_when_server_ran(
    triton_home: TritonInstallation, graphs, tmp_path: Path
) -> None:
    add_model(tmp_path, RETRIEVE, contract.GRAPH_RETRIEVE, graphs[RETRIEVE])
    server = LocalTritonServer(tmp_path, installation=triton_home)
    t0 = time.monotonic()
    server.start()
    pid = server.pid
    server.wait_until_ready()
    ready = time.monotonic() - t0
    assert len(_group_members(pid)) >= 2  # server + at least one python stub
    took = server.stop()
    print(f"\n[measure] start->ready {ready:.2f} s, stop {took:.2f} s")
    assert not server.is_running() and server.pid is None
    assert _group_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "Started GRPCInferenceService" in server.log_text()  # kept after stop
    assert server.stop() >= 0  # idempotent
