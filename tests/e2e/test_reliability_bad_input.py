"""Bad input end to end against a real local tritonserver, and the security defaults.

One table of hostile or malformed requests, sent two ways:

* through `client.RecommenderClient` (validation before sending: nothing reaches the
  server, the error is a `client.errors` type);
* as raw tritonclient gRPC requests that bypass the client (the server's own checks and
  export/triton/python_backend/model.py's per-request validation answer, with a gRPC status).

Every row asserts the exact error class, the status (raw rows) and that the message names
the offending value, while good requests run concurrently (benchmarks/load_test.py's
generator, every answer compared with onnxruntime): a bad request never disturbs them.
The served models come from `tests.support.served_stack` (real export, python backend). Without
the server (scripts/setup_triton.sh) these tests fail; they never skip.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client import (
    InvalidRequestError,
    ModelAdmin,
    ModelNotFoundError,
    RecommenderClient,
    RecommenderError,
    UnknownRawIdError,
)
from kmr import contract
from tests.support.load import BackgroundLoad
from tests.support.served_stack import ITEM_IDS, MAX_BATCH, NUM_ITEMS, NUM_USERS, USER_IDS, K

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
RERANK, RETRIEVE = contract.GRAPH_RERANK, contract.GRAPH_RETRIEVE
BIG = 2**62
TOO_MANY = contract.DEFAULT_MAX_CANDIDATES + 1
TOO_LONG = contract.DEFAULT_MAX_EXCLUDE + 1
NO_EXCLUDE = None
ROUNDS = 3  # each bad request is sent this many times while good traffic runs


@dataclass(frozen=True)
class Case:
    """One bad input: how to send it and what must come back."""

    call: Callable[[Any], Any]  # stack -> result (raises the expected error)
    error: type[BaseException]
    fragments: tuple[str, ...]  # all must appear in the message
    status: str | None = None  # raw rows: the gRPC status


# -- client side ---------------------------------------------------------------------------
def _client(stack, kind: str, **options) -> RecommenderClient:
    return RecommenderClient(stack.grpc_url, options.pop("name", stack.names[kind]),
                             vocabularies=stack.repo, **options)


def _rerank(users, candidates, **kwargs):
    options = {k: kwargs.pop(k) for k in ("name", "model_version") if k in kwargs}

    def call(stack):
        with _client(stack, RERANK, **options) as client:
            return client.rerank(users, candidates, **kwargs)
    return call


def _recommend(users, **kwargs):
    options = {k: kwargs.pop(k) for k in ("name", "model_version") if k in kwargs}

    def call(stack):
        with _client(stack, RETRIEVE, **options) as client:
            return client.recommend(users, **kwargs)
    return call


CLIENT_CASES = {
    "negative id": Case(_rerank([-1], [[0, 1]], raw_ids=False), InvalidRequestError,
                        ("user_ids", ">= 0", "Received: -1")),
    "negative item id": Case(_recommend([0], exclude=[[3, -2]], raw_ids=False),
                             InvalidRequestError, ("exclude[0]", "Received: -2")),
    "unknown raw user id": Case(_recommend(["nobody"]), UnknownRawIdError, ("'nobody'",)),
    "unknown raw item id": Case(_rerank([USER_IDS[0]], [[ITEM_IDS[0], "item-9999"]]),
                                UnknownRawIdError, ("'item-9999'",)),
    "float ids": Case(_rerank([0.5], [[1, 2]], raw_ids=False), InvalidRequestError,
                      ("user_ids", "0.5", "float64")),
    "wrong rank (users 2-D)": Case(_recommend([[0, 1]], raw_ids=False), InvalidRequestError,
                                   ("user_ids", "wrong rank", "(1, 2)")),
    "wrong rank (candidates 1-D)": Case(_rerank([0], [1, 2, 3], raw_ids=False),
                                        InvalidRequestError,
                                        ("candidate_item_ids", "wrong rank", "(3,)")),
    "ragged candidates": Case(_rerank([0, 1], [[0, 1], [2]], raw_ids=False),
                              InvalidRequestError, ("candidate_item_ids", "ragged")),
    "empty batch": Case(_recommend([], raw_ids=False), InvalidRequestError,
                        ("user_ids", "empty")),
    "zero candidates": Case(_rerank([0], [[]], raw_ids=False), InvalidRequestError,
                            ("zero candidates",)),
    "k > exported k": Case(_recommend([0], k=K + 1, raw_ids=False), InvalidRequestError,
                           (f"k={K + 1}", f"[1, {K}]")),
    "k = 0": Case(_rerank([0], [[1, 2]], k=0, raw_ids=False), InvalidRequestError,
                  ("k=0",)),
    "exclusion list too long": Case(_recommend([0], exclude=[[1] * TOO_LONG], raw_ids=False),
                                    InvalidRequestError,
                                    (f"max_exclude={TOO_LONG - 1}", f"Received: {TOO_LONG}")),
    "oversized request (candidates)": Case(_rerank([0], [[1] * TOO_MANY], raw_ids=False),
                                           InvalidRequestError,
                                           (f"max_candidates={TOO_MANY - 1}",
                                            f"Received: {TOO_MANY}")),
    "unknown model": Case(_recommend([0], name="no_such_model", raw_ids=False),
                          ModelNotFoundError, ("'no_such_model'",)),
    "unknown version": Case(_recommend([0], model_version="99", raw_ids=False),
                            ModelNotFoundError, ("version 99",)),
    "wrong method for the graph": Case(_rerank([0], [[1]], name="rel_retrieve",
                                               raw_ids=False),
                                       InvalidRequestError, ("'retrieve' model", "recommend()")),
}


# -- server side: raw tritonclient requests that bypass the client --------------------------
def _i64(value) -> np.ndarray:
    return np.array(value, dtype=np.int64)


def _raw(kind: str, *, model: str | None = None, version: str = "", **inputs):
    def call(stack):
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape),
                                           np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        with grpcclient.InferenceServerClient(stack.grpc_url) as client:
            result = client.infer(model or stack.names[kind], tensors, model_version=version)
            return {n: result.as_numpy(n) for n in contract.OUTPUTS[kind]}
    return call


INVALID, NOT_FOUND = "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"
ISE = InferenceServerException
SERVER_CASES = {
    "float ids": Case(_raw(RERANK, user_id=np.array([[0.5]], np.float32),
                           item_ids=_i64([[1, 2]])), ISE,
                      ("'user_id'", "'FP32'", "expects 'INT64'"), INVALID),
    "wrong rank": Case(_raw(RERANK, user_id=_i64([0]), item_ids=_i64([[1, 2]])), ISE,
                       ("unexpected shape for input 'user_id'", "got [1]"), INVALID),
    # Batch 0 with a non-empty id list; an all-empty batch crashes the server (see below).
    "empty batch": Case(_raw(RERANK, user_id=np.zeros((0, 1), np.int64),
                             item_ids=np.zeros((0, 2), np.int64)), ISE,
                        ("input byte size mismatch for input 'item_ids'",), INVALID),
    "zero candidates": Case(_raw(RERANK, user_id=_i64([[0]]),
                                 item_ids=np.zeros((1, 0), np.int64)), ISE,
                            ("'item_ids' has 0 candidates",
                             f"between 1 and {TOO_MANY - 1}"), INVALID),
    "batch > max_batch_size": Case(
        _raw(RETRIEVE, user_id=np.zeros((MAX_BATCH + 1, 1), np.int64)), ISE,
        (f"batch-size must be <= {MAX_BATCH}",), INVALID),
    "exclusion list too long": Case(
        _raw(RETRIEVE, user_id=_i64([[0]]), exclude_item_ids=np.ones((1, TOO_LONG), np.int64)),
        ISE, (f"'exclude_item_ids' has {TOO_LONG} ids", f"at most {TOO_LONG - 1}"), INVALID),
    "oversized request (candidates)": Case(
        _raw(RERANK, user_id=_i64([[0]]), item_ids=np.ones((1, TOO_MANY), np.int64)), ISE,
        (f"'item_ids' has {TOO_MANY} candidates", f"between 1 and {TOO_MANY - 1}"), INVALID),
    "unknown model": Case(_raw(RETRIEVE, model="no_such_model", user_id=_i64([[0]])), ISE,
                          ("'no_such_model'", "not found"), NOT_FOUND),
    "unknown version": Case(_raw(RETRIEVE, version="99", user_id=_i64([[0]])), ISE,
                            ("version 99", "not found"), NOT_FOUND),
    "wrong input name": Case(_raw(RERANK, user=_i64([[0]]), item_ids=_i64([[1, 2]])), ISE,
                             ("'user'",), INVALID),
    "missing required input": Case(_raw(RERANK, user_id=_i64([[0]])), ISE,
                                   ("item_ids",), INVALID),
}


def _message(error: BaseException) -> str:
    return error.message() if isinstance(error, InferenceServerException) else str(error)


def _status(error: BaseException) -> str | None:
    if isinstance(error, InferenceServerException):
        return error.status()
    return getattr(error, "status", None)


def _assert_rejected_while_good_traffic_is_unaffected(stack, side: str, name: str,
                                                      case: Case) -> None:
    with BackgroundLoad(stack.grpc_url, stack.names, {"served": stack.sessions},
                        concurrency=4, check_fraction=1.0, num_users=stack.num_users,
                        num_items=stack.num_items, retries=0) as load:
        load.wait_for_answers(4)  # good traffic flows before the bad request ...
        for _ in range(ROUNDS):
            with pytest.raises(case.error) as info:
                case.call(stack)
        load.wait_for_answers(4)  # ... and after it
    error = info.value
    message = _message(error)
    # Exact class: not merely a subclass (UnknownRawIdError is an InvalidRequestError).
    assert type(error) is case.error, f"{type(error).__name__}: {message}"
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if case.status is not None:
        assert _status(error) == case.status, f"{_status(error)}: {message}"
    result = load.result
    print(f"\n[outcome] | {side} | {name} | {type(error).__name__} | {_status(error) or '-'} "
          f"| {message[:140]} | good: {result.ok} ok, {result.error_count} errors, "
          f"{result.wrong} wrong")
    assert result.ok > 0 and result.error_count == 0 and result.wrong == 0, result.summary()


@pytest.mark.parametrize("name", list(CLIENT_CASES))
def test_client_raises_exact_error_naming_value_when_request_is_bad(served_stack, name):
    _assert_rejected_while_good_traffic_is_unaffected(served_stack, "client", name,
                                                      CLIENT_CASES[name])


@pytest.mark.parametrize("name", list(SERVER_CASES))
def test_server_rejects_only_the_bad_request_when_client_is_bypassed(served_stack, name):
    _assert_rejected_while_good_traffic_is_unaffected(served_stack, "raw", name,
                                                      SERVER_CASES[name])


def _empty_grpc(url: str, model: str, inputs: list[tuple[str, list[int], bytes]],
                timeout: float = 5.0) -> str:
    """Sends raw tensors (name, declared shape, raw bytes) over gRPC; returns the outcome."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, shape, _ in inputs:
        request.inputs.add(name=name, datatype="INT64", shape=shape)
    request.raw_input_contents.extend(data for _, _, data in inputs)
    with grpc.insecure_channel(url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request,
                                                                          timeout=timeout)
        except grpc.RpcError as error:
            return f"{error.code()}: {error.details()}"
    return "answered"


def _empty_http(url: str, model: str, body: bytes, timeout: float = 5.0) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return f"HTTP {answer.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read()[:200]!r}"


def _empty_requests(stack) -> dict[str, Callable[[], str]]:
    """Every empty (batch 0) shape we know, over gRPC and HTTP/JSON, for both graphs."""
    rr, rt = stack.names[RERANK], stack.names[RETRIEVE]
    user, items, exclude = contract.USER_ID, contract.ITEM_IDS, contract.EXCLUDE_ITEM_IDS
    grpc_cases = {
        "rerank u[0,1] i[0,0]": (rr, [(user, [0, 1], b""), (items, [0, 0], b"")]),
        "rerank u[0,1] i[0,5]": (rr, [(user, [0, 1], b""), (items, [0, 5], b"")]),
        "rerank u[0,1] only": (rr, [(user, [0, 1], b"")]),
        "rerank u[0,1] 0 bytes, i[0,5] 40 bytes": (rr, [(user, [0, 1], b""),
                                                        (items, [0, 5], bytes(40))]),
        "retrieve u[0,1]": (rt, [(user, [0, 1], b"")]),
        "retrieve u[0,1] x[0,0]": (rt, [(user, [0, 1], b""), (exclude, [0, 0], b"")]),
        "retrieve u[0,1] x[0,3]": (rt, [(user, [0, 1], b""), (exclude, [0, 3], b"")]),
        "retrieve u[0] (rank 1)": (rt, [(user, [0], b"")]),
    }
    calls: dict[str, Callable[[], str]] = {
        f"grpc {name}": (lambda m=model, i=inputs: _empty_grpc(stack.grpc_url, m, i))
        for name, (model, inputs) in grpc_cases.items()
    }
    for model in (rr, rt):
        body = (b'{"inputs":[{"name":"user_id","shape":[0,1],"datatype":"INT64","data":[]}]}')
        calls[f"http json {model} u[0,1]"] = (
            lambda m=model, b=body: _empty_http(stack.http_url, m, b))
        body = (b'{"inputs":[{"name":"user_id","shape":[0,1],"datatype":"INT64","data":[0]}]}')
        calls[f"http json {model} u[0,1] data [0]"] = (
            lambda m=model, b=body: _empty_http(stack.http_url, m, b))
    return calls


def test_server_survives_and_rejects_when_batch_is_empty_in_any_shape(
    served_stack, triton_home
) -> None:
    """Used to SIGSEGV tritonserver 2.51 (python backend, user_id reshaped to rank 0)."""
    from export.triton.local_server import LocalTritonServer

    with LocalTritonServer(served_stack.repo, installation=triton_home) as server:
        stack = dataclasses.replace(served_stack, server=server)
        with BackgroundLoad(stack.grpc_url, stack.names, {"served": stack.sessions},
                            concurrency=4, check_fraction=1.0, num_users=stack.num_users,
                            num_items=stack.num_items, retries=0) as load:
            load.wait_for_answers(4)
            outcomes = {name: call() for name, call in _empty_requests(stack).items()}
            time.sleep(0.5)
            alive = server.is_running()
            load.wait_for_answers(4)  # good traffic still answered after the burst
        for name, outcome in outcomes.items():
            print(f"\n[outcome] | raw | empty batch: {name} | {outcome} | alive: {alive}")
        assert alive, f"tritonserver died on an empty batch: {outcomes}"
        assert all(o.startswith(("StatusCode.INVALID_ARGUMENT", "HTTP 400"))
                   for o in outcomes.values()), outcomes
        result = load.result
        assert result.ok > 0 and result.error_count == 0 and result.wrong == 0, result.summary()


@pytest.mark.parametrize(("kind", "inputs"), [
    (RERANK, dict(user_id=_i64([[-1]]), item_ids=_i64([[0, 1]]))),
    (RERANK, dict(user_id=_i64([[0]]), item_ids=_i64([[1, NUM_ITEMS]]))),
    (RETRIEVE, dict(user_id=_i64([[0]]), exclude_item_ids=_i64([[3, -2]]))),
    (RETRIEVE, dict(user_id=_i64([[BIG]]), exclude_item_ids=_i64([[-1]]))),
])
def test_server_answers_out_of_range_ids_like_production_when_client_is_bypassed(
        served_stack, kind, inputs) -> None:
    # Same outcome as Triton's onnxruntime backend: the graph's contract, not an error
    # (a bad user: an empty row; a bad candidate: never ranked; a bad exclusion: ignored).
    stack = served_stack
    with BackgroundLoad(stack.grpc_url, stack.names, {"served": stack.sessions},
                        concurrency=2, check_fraction=1.0, num_users=stack.num_users,
                        num_items=stack.num_items, retries=0) as load:
        answer = _raw(kind, **inputs)(stack)
        load.wait_for_answers(4)
    users, ids = inputs[contract.USER_ID][:, 0], inputs[contract.INPUTS[kind][1]]
    expected = stack.reference(kind, users, ids)
    np.testing.assert_array_equal(answer[contract.TOP_ITEM_IDS], expected[contract.TOP_ITEM_IDS])
    filled = (expected[contract.TOP_ITEM_IDS] >= 0).sum(axis=1)
    assert answer[contract.NUM_RESULTS][:, 0].tolist() == filled.tolist()
    if users[0] < 0 or users[0] >= NUM_USERS:
        assert filled.tolist() == [0]
    result = load.result
    assert result.ok > 0 and result.error_count == 0 and result.wrong == 0, result.summary()


# -- valid edge cases: accepted, and equal to onnxruntime ------------------------------------
def test_client_pads_like_onnxruntime_when_fewer_candidates_than_k(served_stack) -> None:
    stack = served_stack
    candidates = np.array([[7, 3], [0, 59]])
    with _client(stack, RERANK) as client:
        answer = client.rerank([1, 2], candidates, raw_ids=False)
    expected = stack.reference(RERANK, [1, 2], candidates)
    np.testing.assert_array_equal(answer.item_indices, expected[contract.TOP_ITEM_IDS])
    np.testing.assert_array_equal(answer.positions, expected[contract.TOP_POSITIONS])
    assert (answer.item_indices[:, 2:] == contract.INVALID_ID).all()
    assert np.isneginf(answer.scores[:, 2:]).all()
    raw = _raw(RERANK, user_id=_i64([[1], [2]]), item_ids=candidates)(stack)
    np.testing.assert_array_equal(raw[contract.TOP_ITEM_IDS], expected[contract.TOP_ITEM_IDS])


def test_client_chunks_and_matches_onnxruntime_when_batch_exceeds_max_batch_size(
    served_stack,
) -> None:
    stack = served_stack
    users = np.arange(3 * MAX_BATCH + 1) % NUM_USERS
    exclude = np.stack([users % NUM_ITEMS, (users * 7) % NUM_ITEMS], axis=1)
    with _client(stack, RETRIEVE) as client:
        answer = client.recommend([USER_IDS[u] for u in users],
                                  exclude=[[ITEM_IDS[i] for i in row] for row in exclude])
        assert client.stats.calls == 1 + 4  # config + ceil(25 / 8) chunks
    expected = stack.reference(RETRIEVE, users, exclude)
    np.testing.assert_array_equal(answer.item_indices, expected[contract.TOP_ITEM_IDS])
    np.testing.assert_allclose(answer.scores, expected[contract.TOP_SCORES], atol=1e-6)
    assert answer.item_ids[0].tolist() == [ITEM_IDS[i] for i in expected[contract.TOP_ITEM_IDS][0]]


# -- security defaults -----------------------------------------------------------------------
# /proc/net/tcp{,6} spellings of 127.0.0.1, ::ffff:127.0.0.1 and ::1 (never 0.0.0.0 / ::).
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening(port: int) -> list[tuple[str, str]]:
    """(file, local address hex) of LISTEN sockets on ``port`` in /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.append((table, address))
    return found


def test_local_server_listens_on_loopback_only_when_started_with_defaults(served_stack):
    server = served_stack.server
    with open(f"/proc/{server.pid}/cmdline", encoding="utf-8") as f:
        argv = f.read().split("\0")
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--model-control-mode=none"):
        assert flag in argv, argv
    for url in (server.grpc_url, server.http_url, server.metrics_url):
        port = urlsplit(url if "://" in url else f"//{url}").port
        sockets = _listening(port)
        assert sockets, f"nothing listens on {url}"
        assert all(address in LOOPBACK for _, address in sockets), (url, sockets)


def test_serve_defaults_are_loopback_and_mode_none_when_no_option_is_given() -> None:
    import argparse

    from export.cli import serve as serve_command
    from export.triton.local_server import LocalTritonServer

    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.model_control_mode) == ("127.0.0.1", "none")
    server = LocalTritonServer(ROOT, installation=object())  # type: ignore[arg-type]
    assert (server.host, server.model_control_mode) == ("127.0.0.1", "none")


def test_admin_load_is_refused_when_server_runs_in_mode_none(served_stack) -> None:
    with ModelAdmin(served_stack.grpc_url) as admin:
        with pytest.raises(RecommenderError, match="not allowed"):
            admin.load_model(served_stack.names[RERANK])
        with pytest.raises(RecommenderError, match="not allowed"):
            admin.unload_model(served_stack.names[RERANK])
        assert admin.is_model_ready(served_stack.names[RERANK])


def test_served_config_bounds_request_sizes_when_exported(served_stack) -> None:
    for kind in (RERANK, RETRIEVE):
        with _client(served_stack, kind) as client:
            info = client.model_info
        assert info.max_batch_size == MAX_BATCH
        assert info.max_candidates == contract.DEFAULT_MAX_CANDIDATES
        assert info.max_exclude == contract.DEFAULT_MAX_EXCLUDE


def test_export_refuses_keras_file_with_code_when_it_holds_a_lambda_layer(tmp_path) -> None:
    import keras

    from export.api import ExportOptions, export_model
    from export.errors import ExportError

    marker = tmp_path / "lambda-ran"

    def touch_marker(x):  # Python code that would run if the layer were deserialised
        marker.touch()
        return x

    inputs = keras.Input(shape=(1,), dtype="float32", name=contract.USER_ID)
    outputs = keras.layers.Lambda(touch_marker, name="code")(inputs)
    keras.Model(inputs, outputs).save(tmp_path / contract.MODEL_FILE)
    marker.unlink()
    with pytest.raises(ExportError) as info:
        export_model(tmp_path / contract.MODEL_FILE, tmp_path / "repo",
                     ExportOptions(backend="python"))
    message = str(info.value)
    # Refused by name, either by Keras's safe_mode or by the exporter's layer allowlist.
    assert "Lambda" in message and ("safe_mode" in message or "refused" in message), message
    assert not marker.exists(), "the Lambda's Python code ran during the export"
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


UNSAFE = re.compile(
    r"\b(?:c?pickle|dill|marshal|shelve|joblib)\b"  # object deserialisers
    r"|(?<![\w.])(?:eval|exec|compile|__import__)\s*\("  # code from strings
    r"|allow_pickle\s*=\s*True|safe_mode\s*=\s*False|shell\s*=\s*True"
    r"|yaml\.(?:unsafe_)?load\("
)


def test_package_sources_have_no_pickle_or_eval_when_grepped() -> None:
    sources = [
        p for package in ("kmr", "export", "client") for p in sorted((ROOT / package).rglob("*.py"))
    ]
    assert any(p.name == "model.py" for p in sources)  # the python backend is included
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if UNSAFE.search(line)
    ]
    assert hits == [], "\n".join(hits)
    # Keras deserialisation in the export runs with safe_mode=True (wherever it lives).
    assert any(
        "safe_mode=True" in p.read_text(encoding="utf-8")
        for p in sources
        if p.parts[-2] == "export"
    )
