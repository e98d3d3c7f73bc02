"""Unit tests of the thin client with the transport replaced by an in-process fake.

The fake answers like a served kmr graph (numpy reference of the contract), so these
tests cover validation, encoding, chunking, decoding, retries and config parsing
without a server. tests/e2e/test_client_triton.py repeats the essentials against a real one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geventhttpclient.response import HTTPConnectionClosed
from google.protobuf.json_format import MessageToJson
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

import client as client_pkg
from client import (
    AsyncRecommenderClient,
    InferenceError,
    InvalidRequestError,
    ModelContractError,
    ModelNotFoundError,
    RecommenderClient,
    RecommenderError,
    ServerUnavailableError,
    UnknownRawIdError,
    Vocabularies,
    cli,
    load_vocabularies,
    normalize_config,
    parse_model_info,
)
from client._transport import GrpcTransport, HttpTransport, InferAnswer, to_client_error
from kmr import contract
from kmr.vocabulary import UnknownIdError, Vocabulary

NUM_USERS, NUM_ITEMS, K = 4, 12, 5
MAX_CANDIDATES, MAX_EXCLUDE = 6, 3
RNG = np.random.default_rng(7)
USERS = RNG.normal(size=(NUM_USERS, 3)).astype(np.float32)
ITEMS = RNG.normal(size=(NUM_ITEMS, 3)).astype(np.float32)
USER_VOCAB = Vocabulary([f"u{i}" for i in range(NUM_USERS)], name="user id")
ITEM_VOCAB = Vocabulary([100 + 10 * i for i in range(NUM_ITEMS)], name="item id")
VOCABS = Vocabularies(users=USER_VOCAB, items=ITEM_VOCAB)


# Raw ids baked into the fake raw-id graphs: leading zeros, negative, huge, empty.
INT_USERS = [-1, 0, 2**62, 439708184]
INT_ITEMS = [-1, 0, 7, 2**62, -(2**40), 439708184, 12, 13, 14, 15, 16, 17]
STR_USERS = ["001", "1", "", "u3"]
STR_ITEMS = ["0439708184", "439708184", "", "-1", "0", "a", "b", "c", "d", "é", "f", "g"]
RAW_IDS = {contract.IDS_INT: (INT_USERS, INT_ITEMS), contract.IDS_STR: (STR_USERS, STR_ITEMS)}
# Facts older configs carried (current exports keep them per version, not in the config).
LEGACY = {contract.PARAM_NUM_USERS: NUM_USERS, contract.PARAM_NUM_ITEMS: NUM_ITEMS,
          contract.PARAM_EMBEDDING_DIM: 3}


# -- configs in both protocols' JSON shapes -------------------------------------------------
def config_message(kind: str, *, max_batch_size: int = 8,
                   id_kind: str | None = contract.IDS_INDEX, **params: Any) -> Any:
    """A ModelConfig as export/triton/config.py writes it (built here independently).

    ``id_kind=None``: an older export (no id_kind parameter, no num_results output).
    """
    config = model_config_pb2.ModelConfig(name=f"mf_{kind}", max_batch_size=max_batch_size)
    id_type = model_config_pb2.TYPE_STRING if id_kind == contract.IDS_STR else \
        model_config_pb2.TYPE_INT64
    user = config.input.add(name=contract.USER_ID, data_type=id_type, dims=[1])
    user.reshape.SetInParent()
    second = contract.ITEM_IDS if kind == contract.GRAPH_RERANK else contract.EXCLUDE_ITEM_IDS
    config.input.add(name=second, data_type=id_type, dims=[-1])
    legacy = id_kind is None
    for name in contract.OUTPUTS[kind]:
        if name == contract.NUM_RESULTS and legacy:
            continue  # older exports had no num_results
        dtype = {contract.TOP_SCORES: model_config_pb2.TYPE_FP32,
                 contract.TOP_ITEM_IDS: id_type}.get(name, model_config_pb2.TYPE_INT64)
        config.output.add(name=name, data_type=dtype,
                          dims=[1] if name == contract.NUM_RESULTS else [K])
    values = {
        contract.PARAM_GRAPH_KIND: kind,
        contract.PARAM_ID_KIND: id_kind,
        contract.PARAM_K: K,
        contract.PARAM_MAX_CANDIDATES: MAX_CANDIDATES,
        contract.PARAM_MAX_EXCLUDE: MAX_EXCLUDE,
        contract.PARAM_USER_VOCAB: contract.USER_VOCAB_FILE,
        contract.PARAM_ITEM_VOCAB: contract.ITEM_VOCAB_FILE,
    } | params
    for key, value in values.items():
        if value is not None:
            config.parameters[key].string_value = str(value)
    return config


def grpc_json(message: Any) -> dict[str, Any]:
    """What tritonclient.grpc get_model_config(as_json=True) returns."""
    response = service_pb2.ModelConfigResponse(config=message)
    return json.loads(MessageToJson(response, preserving_proto_field_name=True))


def http_json(kind: str, id_kind: str = contract.IDS_INDEX) -> dict[str, Any]:
    """What the HTTP endpoint returns (shape captured from tritonserver 2.51)."""
    id_type = "TYPE_STRING" if id_kind == contract.IDS_STR else "TYPE_INT64"
    outputs = [
        {"name": n, "data_type": {contract.TOP_SCORES: "TYPE_FP32",
                                  contract.TOP_ITEM_IDS: id_type}.get(n, "TYPE_INT64"),
         "dims": [1 if n == contract.NUM_RESULTS else K], "label_filename": "",
         "is_shape_tensor": False}
        for n in contract.OUTPUTS[kind]
    ]
    second = contract.ITEM_IDS if kind == contract.GRAPH_RERANK else contract.EXCLUDE_ITEM_IDS
    return {
        "name": f"mf_{kind}", "platform": "", "backend": "python", "max_batch_size": 8,
        "input": [
            {"name": contract.USER_ID, "data_type": id_type, "format": "FORMAT_NONE",
             "dims": [1], "reshape": {"shape": []}, "is_shape_tensor": False,
             "allow_ragged_batch": False, "optional": False},
            {"name": second, "data_type": id_type, "format": "FORMAT_NONE",
             "dims": [-1], "is_shape_tensor": False, "allow_ragged_batch": True,
             "optional": kind == contract.GRAPH_RETRIEVE},
        ],
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "parameters": {
            contract.PARAM_GRAPH_KIND: {"string_value": kind},
            contract.PARAM_ID_KIND: {"string_value": id_kind},
            contract.PARAM_K: {"string_value": str(K)},
            contract.PARAM_MAX_CANDIDATES: {"string_value": str(MAX_CANDIDATES)},
            contract.PARAM_MAX_EXCLUDE: {"string_value": str(MAX_EXCLUDE)},
            contract.PARAM_USER_VOCAB: {"string_value": contract.USER_VOCAB_FILE},
            contract.PARAM_ITEM_VOCAB: {"string_value": contract.ITEM_VOCAB_FILE},
        },
    }


# -- a fake transport answering like a served graph ------------------------------------------
def _lookup(table: Sequence[Any], values: np.ndarray, id_kind: str) -> np.ndarray:
    """Raw wire ids -> dense indices of ``table`` (-1: unknown), as the graph maps them."""
    index = {raw: i for i, raw in enumerate(table)}
    flat = [v.decode("utf-8") if id_kind == contract.IDS_STR else int(v)
            for v in values.ravel().tolist()]
    return np.array([index.get(v, -1) for v in flat], dtype=np.int64).reshape(values.shape)


def reference_answer(kind: str, inputs: Mapping[str, np.ndarray],
                     id_kind: str = contract.IDS_INDEX, *, users_table: np.ndarray = USERS,
                     items_table: np.ndarray = ITEMS, legacy: bool = False
                     ) -> dict[str, np.ndarray]:
    """numpy version of the contract: k columns, best first, num_results, empty slots
    PAD / -1 ids, -1 positions and EMPTY_SCORE (legacy: -1 / -inf, no num_results)."""
    users, second = inputs[contract.USER_ID].reshape(-1), inputs.get(
        contract.ITEM_IDS, inputs.get(contract.EXCLUDE_ITEM_IDS))
    if id_kind != contract.IDS_INDEX:
        user_table, item_table = RAW_IDS[id_kind]
        users, second = _lookup(user_table, users, id_kind), _lookup(item_table, second, id_kind)
    valid_user = (users >= 0) & (users < len(users_table))
    u = users_table[np.where(valid_user, users, 0)]
    if kind == contract.GRAPH_RERANK:
        ok = (second >= 0) & (second < len(items_table)) & valid_user[:, None]
        scores = np.einsum("bd,bnd->bn", u, items_table[np.where(ok, second, 0)])
        ids = np.where(ok, second, -1)
    else:
        scores = u @ items_table.T
        ok = np.broadcast_to(valid_user[:, None], scores.shape).copy()
        for b, row in enumerate(second):
            ok[b, row[(row >= 0) & (row < len(items_table))]] = False
        ids = np.broadcast_to(np.arange(len(items_table)), scores.shape)
    scores = np.where(ok, scores, -np.inf).astype(np.float32)
    pad = max(0, K - scores.shape[1])
    scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    top = np.take_along_axis(scores, order, axis=1)
    empty = np.isinf(top)
    top_ids = np.where(empty, -1, np.take_along_axis(ids, order, axis=1))
    out = {contract.TOP_ITEM_IDS: top_ids,
           contract.TOP_SCORES: top if legacy else np.where(
               empty, np.float32(contract.EMPTY_SCORE), top).astype(np.float32)}
    if id_kind != contract.IDS_INDEX:
        table = RAW_IDS[id_kind][1]
        raw = [table[i] if i >= 0 else None for i in top_ids.ravel().tolist()]
        if id_kind == contract.IDS_INT:
            out[contract.TOP_ITEM_IDS] = np.array(
                [contract.PAD_INT if v is None else v for v in raw], np.int64).reshape(empty.shape)
        else:
            wire = np.empty(len(raw), dtype=object)
            wire[:] = [(contract.PAD_STR if v is None else v).encode() for v in raw]
            out[contract.TOP_ITEM_IDS] = wire.reshape(empty.shape)
    if kind == contract.GRAPH_RERANK:
        out[contract.TOP_POSITIONS] = np.where(empty, -1, order)
    if not legacy:
        out[contract.NUM_RESULTS] = (~empty).sum(axis=1, keepdims=True).astype(np.int64)
    return out


class FakeTransport:
    """Records every call; `failures` are raised (in order) before answering.

    Answers as version `version` (an `InferAnswer`), or, while `versions` is not empty,
    as the next version popped from it; `tables` gives a version's own user and item
    tables (a retrain that moved the dense indices).
    """

    def __init__(self, config: dict[str, Any], kind: str, id_kind: str = contract.IDS_INDEX,
                 *, legacy: bool = False) -> None:
        self.config = config
        self.kind = kind
        self.id_kind = id_kind
        self.legacy = legacy
        self.version = "1"
        self.versions: list[str] = []
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.requests: list[dict[str, np.ndarray]] = []
        self.failures: list[Exception] = []
        self.config_calls = 0
        self.closed = False

    def _maybe_fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def get_config(self) -> dict[str, Any]:
        self.config_calls += 1
        self._maybe_fail()
        return self.config

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        self._maybe_fail()
        self.requests.append({name: np.array(a) for name, a in inputs.items()})
        wanted = contract.OUTPUTS[self.kind]
        assert tuple(outputs) == (wanted[:-1] if self.legacy else wanted)
        version = self.versions.pop(0) if self.versions else self.version
        users, items = self.tables.get(version, (USERS, ITEMS))
        answer = reference_answer(self.kind, inputs, self.id_kind, users_table=users,
                                  items_table=items, legacy=self.legacy)
        return InferAnswer(answer, model_version=version)

    def close(self) -> None:
        self.closed = True


class AsyncFakeTransport(FakeTransport):
    async def get_config(self) -> dict[str, Any]:  # type: ignore[override]
        return FakeTransport.get_config(self)

    async def infer(self, inputs, outputs):  # type: ignore[override]
        await asyncio.sleep(0)
        return FakeTransport.infer(self, inputs, outputs)

    async def close(self) -> None:  # type: ignore[override]
        self.closed = True


def make_client(
    kind: str, *, vocabularies: Any = VOCABS, config: dict | None = None,
    id_kind: str = contract.IDS_INDEX, legacy: bool = False, **options: Any
) -> tuple[RecommenderClient, FakeTransport]:
    if config is None:
        config = grpc_json(config_message(kind, id_kind=None, **LEGACY) if legacy else
                           config_message(kind, id_kind=id_kind))
    transport = FakeTransport(config, kind, id_kind, legacy=legacy)
    client = RecommenderClient("fake:0", f"mf_{kind}", vocabularies=vocabularies,
                               transport=transport, **options)
    client._sleep = lambda seconds: None
    client._random = lambda: 0.0  # no jitter: the exact exponential waits
    return client, transport


@pytest.fixture()
def rerank() -> tuple[RecommenderClient, FakeTransport]:
    return make_client(contract.GRAPH_RERANK)


@pytest.fixture()
def retrieve() -> tuple[RecommenderClient, FakeTransport]:
    return make_client(contract.GRAPH_RETRIEVE)


# -- import hygiene ---------------------------------------------------------------------------
def test_import_client_loads_no_tensorflow_keras_or_export_when_imported() -> None:
    code = (
        "import sys, client, client.aio, client.admin, client.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'onnx', 'onnxruntime', 'export'))\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] == 'kmr')\n"
        "print(heavy, ours)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] ['kmr', 'kmr.contract', 'kmr.vocabulary']"


def test_package_exports_public_names_when_imported() -> None:
    for name in client_pkg.__all__:
        assert hasattr(client_pkg, name), name


# -- config parsing -------------------------------------------------------------------------
@pytest.mark.parametrize("id_kind", contract.ID_KINDS)
@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_parse_model_info_is_identical_when_config_comes_from_grpc_or_http(
    kind: str, id_kind: str
) -> None:
    from_grpc = parse_model_info(grpc_json(config_message(kind, id_kind=id_kind)))
    from_http = parse_model_info(http_json(kind, id_kind))
    assert from_grpc == from_http
    assert (from_grpc.graph_kind, from_grpc.id_kind, from_grpc.k) == (kind, id_kind, K)
    assert (from_grpc.num_users, from_grpc.num_items, from_grpc.embedding_dim) == (None,) * 3
    assert (from_grpc.max_batch_size, from_grpc.max_candidates, from_grpc.max_exclude) == (
        8, MAX_CANDIDATES, MAX_EXCLUDE)
    assert from_grpc.inputs[contract.USER_ID].dims == (1,)
    assert from_grpc.outputs[contract.NUM_RESULTS].dims == (1,)
    assert from_grpc.raw_ids is (id_kind != contract.IDS_INDEX)
    expected_type = "TYPE_STRING" if id_kind == contract.IDS_STR else "TYPE_INT64"
    assert from_grpc.inputs[contract.USER_ID].data_type == expected_type
    assert from_grpc.outputs[contract.TOP_ITEM_IDS].data_type == expected_type


def test_parse_model_info_reads_an_older_config_as_a_dense_index_model_with_sizes() -> None:
    info = parse_model_info(grpc_json(config_message(contract.GRAPH_RERANK, id_kind=None,
                                                     **LEGACY)))
    assert (info.id_kind, info.num_users, info.num_items, info.embedding_dim) == (
        contract.IDS_INDEX, NUM_USERS, NUM_ITEMS, 3)
    assert not info.has_num_results and contract.NUM_RESULTS not in info.outputs_to_request


@pytest.mark.parametrize("tensor", [contract.USER_ID, contract.TOP_ITEM_IDS])
def test_parse_model_info_raises_contract_error_when_id_dtype_contradicts_id_kind(tensor):
    config = config_message(contract.GRAPH_RERANK, id_kind=contract.IDS_STR)
    for spec in (*config.input, *config.output):
        if spec.name == tensor:
            spec.data_type = model_config_pb2.TYPE_INT64
    with pytest.raises(ModelContractError, match=_re(
        f"(id_kind 'str'): tensor {tensor!r} must be TYPE_STRING. Received: TYPE_INT64"
    )):
        parse_model_info(grpc_json(config))


def test_parse_model_info_raises_contract_error_when_raw_model_lacks_num_results() -> None:
    config = config_message(contract.GRAPH_RETRIEVE, id_kind=contract.IDS_INT)
    del config.output[2]
    with pytest.raises(ModelContractError, match=r"output\(s\) \['num_results'\] missing"):
        parse_model_info(grpc_json(config))


def test_normalize_config_gives_http_shape_when_given_grpc_json() -> None:
    grpc = normalize_config(grpc_json(config_message(contract.GRAPH_RERANK)))
    http = normalize_config(http_json(contract.GRAPH_RERANK))
    assert grpc["input"][0]["dims"] == [1] and http["input"][0]["dims"] == [1]
    assert grpc["output"][0]["dims"] == [K]
    assert grpc["parameters"][contract.PARAM_K] == {"string_value": str(K)}
    assert grpc["max_batch_size"] == http["max_batch_size"] == 8


def test_get_model_config_returns_dict_or_message_when_as_json_is_set(rerank) -> None:
    client, _ = rerank
    as_dict = client.get_model_config(as_json=True)
    assert as_dict["name"] == "mf_rerank" and as_dict["input"][1]["dims"] == [-1]
    message = client.get_model_config(as_json=False)
    assert isinstance(message, model_config_pb2.ModelConfig)
    assert message.parameters[contract.PARAM_K].string_value == str(K)


@pytest.mark.parametrize(
    "params, message",
    [
        ({contract.PARAM_K: None}, "parameter 'k' is missing"),
        ({contract.PARAM_NUM_USERS: "many"}, "'num_users' must be an integer. Received: 'many'"),
        ({contract.PARAM_GRAPH_KIND: "ranking"}, "must be one of ('rerank', 'retrieve')"),
        ({contract.PARAM_ID_KIND: "uuid"}, "'id_kind' must be one of ('int', 'str', 'index'). "
         "Received: 'uuid'"),
    ],
)
def test_parse_model_info_raises_contract_error_when_parameters_are_bad(params, message):
    with pytest.raises(ModelContractError, match=_re(message)):
        parse_model_info(grpc_json(config_message(contract.GRAPH_RERANK, **params)))


def test_parse_model_info_raises_contract_error_when_an_output_is_missing() -> None:
    config = config_message(contract.GRAPH_RERANK)
    del config.output[1]
    with pytest.raises(ModelContractError, match=r"output\(s\) \['top_positions'\] missing"):
        parse_model_info(grpc_json(config))


def test_model_info_is_fetched_once_when_used_repeatedly(rerank) -> None:
    client, transport = rerank
    client.rerank(["u0"], [[100, 110]])
    client.rerank(["u1"], [[100, 110]])
    assert client.model_info.k == K
    assert transport.config_calls == 1
    client.fetch_model_info(refresh=True)
    assert transport.config_calls == 2


# -- validation: every error is raised before anything is sent ------------------------------
def _re(text: str) -> str:
    import re

    return re.escape(text)


RERANK_CASES = [
    # (user_ids, candidates, kwargs, error text)
    (["nobody"], [[100]], {}, "`user_ids`: Unknown user id 'nobody': not in the vocabulary of 4"),
    (["u0"], [[100, 999]], {}, "`candidate_item_ids`: Unknown item id 999"),
    ([0, -1], [[0], [0]], {"raw_ids": False}, "`user_ids` index out of range at 1: expected "
     "dense indices in >= 0. Received: -1"),
    ([0], [[3, -2]], {"raw_ids": False}, "`candidate_item_ids` index out of range at [0, 1]: "
     "expected dense indices in >= 0. Received: -2"),
    ([0.0], [[1]], {"raw_ids": False}, "`user_ids` must hold integer dense indices. "
     "Received: 0.0 (dtype float64)"),
    ([0], [[1.5]], {"raw_ids": False}, "`candidate_item_ids` must hold integer dense indices. "
     "Received: 1.5"),
    (["u0"], [[100.0]], {}, "`candidate_item_ids` must hold raw ids (int or str). "
     "Received: 100.0"),
    ([True], [[1]], {"raw_ids": False}, "`user_ids` must hold integer dense indices. "
     "Received: True (dtype bool)"),
    (["0"], [[1]], {"raw_ids": False}, "`user_ids` must hold integer dense indices. "
     "Received: '0'"),
    ([[0]], [[1]], {"raw_ids": False}, "`user_ids` has the wrong rank. Expected a 1-D "
     "sequence [B]. Received: shape (1, 1)"),
    (0, [[1]], {"raw_ids": False}, "`user_ids` has the wrong rank. Expected a 1-D sequence "
     "[B]. Received: shape ()"),
    ([0], [1, 2], {"raw_ids": False}, "`candidate_item_ids` has the wrong rank. Expected a "
     "2-D sequence [B, N]. Received: shape (2,)"),
    ([0, 1], [[1, 2], [3]], {"raw_ids": False}, "`candidate_item_ids` is ragged"),
    ([0, 1], np.array([[1, 2], [3]], dtype=object), {"raw_ids": False},
     "`candidate_item_ids` is ragged"),
    ([], [[1]], {"raw_ids": False}, "`user_ids` is empty. Expected at least one id."),
    ([0], [[]], {"raw_ids": False}, "`candidate_item_ids` has zero candidates per user."),
    ([0], [list(range(7))], {"raw_ids": False}, "Too many candidates: model 'mf_rerank' "
     "accepts at most max_candidates=6 per user. Received: 7"),
    ([0, 1], [[1]], {"raw_ids": False}, "needs one candidate list per user. Expected 2 "
     "lists. Received: 1"),
    ([0], [[1]], {"raw_ids": False, "k": 0}, "Invalid value received for argument `k`. "
     "Expected an int in [1, 5] (model 'mf_rerank' was exported with k=5). Received: k=0"),
    ([0], [[1]], {"raw_ids": False, "k": 6}, "Received: k=6"),
    ([0], [[1]], {"raw_ids": False, "k": -1}, "Received: k=-1"),
    ([0], [[1]], {"raw_ids": False, "k": 2.0}, "Received: k=2.0"),
    ([0], [[1]], {"raw_ids": False, "k": True}, "Received: k=True"),
]


@pytest.mark.parametrize("users, candidates, kwargs, message", RERANK_CASES)
def test_rerank_raises_invalid_request_when_input_is_bad(
    rerank, users, candidates, kwargs, message
) -> None:
    client, transport = rerank
    with pytest.raises(InvalidRequestError, match=_re(message)) as info:
        client.rerank(users, candidates, **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RecommenderError)
    assert transport.requests == []


RETRIEVE_CASES = [
    # (user_ids, kwargs, error text)
    (["u0"], {"exclude": [[100, 5]]}, "`exclude[0]`: Unknown item id 5"),
    ([0, 1], {"raw_ids": False, "exclude": [[1], [-3]]}, "`exclude[1]` index out of range "
     "at 0: expected dense indices in >= 0. Received: -3"),
    ([0], {"raw_ids": False, "exclude": [[1, 2, 3, 4]]}, "`exclude[0]` is too long: model "
     "'mf_retrieve' accepts at most max_exclude=3 items per user. Received: 4"),
    ([0], {"raw_ids": False, "exclude": [[1], [2]]}, "`exclude` needs one list per user. "
     "Expected 1 lists. Received: 2"),
    ([0], {"raw_ids": False, "exclude": [1.5]}, "`exclude[0]` must be a flat list"),
    ([0], {"raw_ids": False, "exclude": [[1.5]]}, "`exclude[0]` must hold integer dense "
     "indices. Received: 1.5"),
    ([0], {"raw_ids": False, "exclude": "abc"}, "`exclude` must be one list of item ids "
     "per user. Received: str"),
    ([0], {"raw_ids": False, "k": 9}, "Expected an int in [1, 5]"),
]


@pytest.mark.parametrize("users, kwargs, message", RETRIEVE_CASES)
def test_recommend_raises_invalid_request_when_input_is_bad(retrieve, users, kwargs, message):
    client, transport = retrieve
    with pytest.raises(InvalidRequestError, match=_re(message)):
        client.recommend(users, **kwargs)
    assert transport.requests == []


LEGACY_RANGE_CASES = [
    ("rerank", {"user_ids": [4], "candidate_item_ids": [[0]]}, "`user_ids` index out of range "
     "at 0: expected dense indices in [0, 4). Received: 4"),
    ("rerank", {"user_ids": [0, -1], "candidate_item_ids": [[0], [0]]}, "`user_ids` index out "
     "of range at 1: expected dense indices in [0, 4). Received: -1"),
    ("rerank", {"user_ids": [0], "candidate_item_ids": [[3, 12]]}, "`candidate_item_ids` "
     "index out of range at [0, 1]: expected dense indices in [0, 12). Received: 12"),
    ("recommend", {"user_ids": [0, 1], "exclude": [[1], [12]]}, "`exclude[1]` index out of "
     "range at 0: expected dense indices in [0, 12). Received: 12"),
]


@pytest.mark.parametrize("method, kwargs, message", LEGACY_RANGE_CASES)
def test_index_range_is_checked_client_side_when_an_older_config_gives_the_sizes(
    method, kwargs, message
) -> None:
    kind = contract.GRAPH_RERANK if method == "rerank" else contract.GRAPH_RETRIEVE
    client, transport = make_client(kind, legacy=True)
    with pytest.raises(InvalidRequestError, match=_re(message)):
        getattr(client, method)(raw_ids=False, **kwargs)
    assert transport.requests == []


def test_out_of_range_indices_are_sent_and_answered_empty_when_sizes_are_unknown(
    rerank, retrieve
) -> None:
    client, transport = rerank
    result = client.rerank([0, NUM_USERS + 5], [[3, NUM_ITEMS + 1], [1, 2]], raw_ids=False)
    assert transport.requests[0][contract.USER_ID][:, 0].tolist() == [0, NUM_USERS + 5]
    assert result.num_results.tolist() == [1, 0]
    assert result.item_ids[0].tolist() == [3] + [-1] * (K - 1)
    assert result.positions[0].tolist() == [0] + [-1] * (K - 1)
    assert np.isneginf(result.scores[0, 1:]).all() and np.isneginf(result.scores[1]).all()
    client, _ = retrieve
    assert client.recommend([1], exclude=[[NUM_ITEMS + 9]], raw_ids=False).num_results[0] == K


def test_unknown_raw_id_error_is_also_vocabulary_unknown_id_error_when_raised(rerank) -> None:
    client, _ = rerank
    with pytest.raises(UnknownIdError) as info:
        client.rerank(["ghost"], [[100]])
    assert isinstance(info.value, UnknownRawIdError) and isinstance(info.value, KeyError)
    assert str(info.value).startswith("`user_ids`: Unknown user id 'ghost'")


def test_recommend_raises_invalid_request_when_model_reranks(rerank) -> None:
    client, transport = rerank
    with pytest.raises(InvalidRequestError, match=_re(
        "Model 'mf_rerank' is a 'rerank' model; `recommend()` needs a 'retrieve' model. "
        "Call `rerank()` instead."
    )):
        client.recommend(["u0"])
    assert transport.requests == []


def test_rerank_raises_invalid_request_when_model_retrieves(retrieve) -> None:
    client, _ = retrieve
    with pytest.raises(InvalidRequestError, match=_re("Call `recommend()` instead.")):
        client.rerank(["u0"], [[100]])


def test_raw_ids_raise_invalid_request_when_no_vocabularies_are_given() -> None:
    client, _ = make_client(contract.GRAPH_RERANK, vocabularies=None)
    with pytest.raises(InvalidRequestError, match="raw_ids=True needs the model's vocabularies"):
        client.rerank(["u0"], [[100]])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"protocol": "udp"}, "Expected one of ('grpc', 'http'). Received: protocol='udp'"),
        ({"retries": -1}, "Expected an int >= 0. Received: retries=-1"),
        ({"backoff": -0.5}, "Received: backoff=-0.5"),
        ({"timeout": 0}, "Received: timeout=0"),
        ({"model_version": "latest"}, "Received: 'latest'"),
        ({"jitter": 1.5}, "Expected a number in [0, 1]. Received: jitter=1.5"),
        ({"jitter": True}, "Received: jitter=True"),
        ({"deadline": 0}, "Expected seconds > 0 (or None for no deadline). Received: deadline=0"),
        ({"deadline": float("nan")}, "Received: deadline=nan"),
    ],
)
def test_client_raises_invalid_request_when_an_option_is_bad(options, message) -> None:
    with pytest.raises(InvalidRequestError, match=_re(message)):
        RecommenderClient("127.0.0.1:1", "mf", **options)


# -- encoding, chunking, decoding -------------------------------------------------------------
def test_rerank_sends_user_ids_as_b_by_1_when_config_dims_are_1(rerank) -> None:
    client, transport = rerank
    client.rerank([0, 1], [[1, 2, 3], [4, 5, 6]], raw_ids=False)
    sent = transport.requests[0]
    assert sent[contract.USER_ID].shape == (2, 1) and sent[contract.USER_ID].dtype == np.int64
    assert sent[contract.ITEM_IDS].shape == (2, 3) and sent[contract.ITEM_IDS].dtype == np.int64


def test_rerank_splits_into_max_batch_size_chunks_and_keeps_order_when_batch_is_large() -> None:
    config = grpc_json(config_message(contract.GRAPH_RERANK, max_batch_size=3))
    client, transport = make_client(contract.GRAPH_RERANK, config=config)
    users = np.array([3, 2, 1, 0, 1, 2, 3, 0])
    candidates = (np.arange(8)[:, None] + np.arange(4)[None, :]) % NUM_ITEMS
    result = client.rerank(users, candidates, raw_ids=False)
    assert [len(r[contract.USER_ID]) for r in transport.requests] == [3, 3, 2]
    sent_users = np.concatenate([r[contract.USER_ID][:, 0] for r in transport.requests])
    np.testing.assert_array_equal(sent_users, users)
    expected = reference_answer(contract.GRAPH_RERANK, {
        contract.USER_ID: users, contract.ITEM_IDS: candidates})
    np.testing.assert_array_equal(result.item_ids, expected[contract.TOP_ITEM_IDS])
    np.testing.assert_array_equal(result.positions, expected[contract.TOP_POSITIONS])
    empty = expected[contract.TOP_SCORES] == np.float32(contract.EMPTY_SCORE)
    np.testing.assert_allclose(result.scores, np.where(empty, -np.inf,
                                                       expected[contract.TOP_SCORES]))
    assert np.isneginf(result.scores[empty]).all() and empty.any()
    np.testing.assert_array_equal(result.num_results, (~empty).sum(axis=1))
    np.testing.assert_array_equal(result.user_ids, users)
    assert result.model_version == "1"


def test_recommend_pads_exclusions_per_chunk_with_minus_1_when_lists_differ_in_length() -> None:
    config = grpc_json(config_message(contract.GRAPH_RETRIEVE, max_batch_size=2))
    client, transport = make_client(contract.GRAPH_RETRIEVE, config=config)
    result = client.recommend([0, 1, 2], exclude=[[5], [], [1, 2, -1]], raw_ids=False)
    sent = [r[contract.EXCLUDE_ITEM_IDS].tolist() for r in transport.requests]
    assert sent == [[[5], [-1]], [[1, 2]]]
    assert not np.isin(result.item_ids[0], [5]).any()
    assert not np.isin(result.item_ids[2], [1, 2]).any()


def test_recommend_sends_one_minus_1_column_when_exclude_is_none(retrieve) -> None:
    client, transport = retrieve
    client.recommend([0, 1], raw_ids=False)
    assert transport.requests[0][contract.EXCLUDE_ITEM_IDS].tolist() == [[-1], [-1]]


def test_result_is_sliced_to_k_when_k_is_below_exported_k(retrieve) -> None:
    client, _ = retrieve
    full = client.recommend([0, 3], raw_ids=False)
    top2 = client.recommend([0, 3], k=2, raw_ids=False)
    assert full.item_ids.shape == (2, K) and top2.item_ids.shape == (2, 2)
    np.testing.assert_array_equal(top2.item_ids, full.item_ids[:, :2])
    np.testing.assert_array_equal(top2.scores, full.scores[:, :2])
    assert top2.positions is None


def test_rerank_maps_raw_ids_both_ways_and_empty_slots_to_none_when_vocabularies_given(
    rerank,
) -> None:
    client, transport = rerank
    result = client.rerank(["u2", "u0"], [[110, 150], [100, 120]])
    assert transport.requests[0][contract.USER_ID][:, 0].tolist() == [2, 0]
    assert transport.requests[0][contract.ITEM_IDS].tolist() == [[1, 5], [0, 2]]
    assert result.item_ids.dtype == object and result.item_ids.shape == (2, K)
    assert result.item_ids[:, 2:].tolist() == [[None] * 3, [None] * 3]
    assert set(result.item_ids[0, :2]) == {110, 150} and set(result.item_ids[1, :2]) == {100, 120}
    assert result.item_indices[:, 2:].tolist() == [[-1] * 3, [-1] * 3]
    assert np.isneginf(result.scores[:, 2:]).all()
    assert result.valid.sum(axis=1).tolist() == [2, 2]
    first = result.positions[0, 0]
    assert result.item_ids[0, 0] == [110, 150][first]
    assert result.user_ids.tolist() == ["u2", "u0"]


def test_recommend_accepts_string_digits_for_int_vocabulary_when_raw_ids(retrieve) -> None:
    client, transport = retrieve
    client.recommend(np.array(["u1"]), exclude=[["100", 110]])
    assert transport.requests[0][contract.EXCLUDE_ITEM_IDS].tolist() == [[0, 1]]


def test_dense_results_keep_minus_1_when_raw_ids_is_false(rerank) -> None:
    client, _ = rerank
    result = client.rerank([0], [[3]], raw_ids=False)
    assert result.item_ids.dtype == np.int64
    assert result.item_ids[0].tolist()[1:] == [-1] * (K - 1)


def test_decoding_raises_contract_error_when_server_returns_index_outside_vocabulary(
    rerank, monkeypatch
) -> None:
    client, transport = rerank
    answer = reference_answer(contract.GRAPH_RERANK, {
        contract.USER_ID: np.array([0]), contract.ITEM_IDS: np.array([[1]])})
    answer[contract.TOP_ITEM_IDS][0, 0] = NUM_ITEMS + 3
    monkeypatch.setattr(transport, "infer", lambda inputs, outputs: answer)
    with pytest.raises(ModelContractError, match="outside the item vocabulary of 12 ids"):
        client.rerank(["u0"], [[110]])


# -- retries and error mapping --------------------------------------------------------------
def _unavailable() -> ServerUnavailableError:
    return to_client_error(InferenceServerException("connection refused",
                                                    status="StatusCode.UNAVAILABLE"), "infer")


def test_infer_retries_with_exponential_backoff_when_server_is_unavailable(rerank) -> None:
    client, transport = rerank
    client.fetch_model_info()
    sleeps: list[float] = []
    client._sleep = sleeps.append
    transport.failures = [_unavailable(), _unavailable()]
    result = client.rerank(["u0"], [[100, 110]])
    assert result.item_ids.shape == (1, K)
    assert sleeps == [0.1, 0.2]
    assert client.stats.retries == 2 and client.stats.failures == 0
    assert client.stats.calls == 1 + 3  # config + three infer attempts


def test_infer_raises_unavailable_after_all_retries_when_server_stays_down(rerank) -> None:
    client, transport = rerank
    client.fetch_model_info()
    sleeps: list[float] = []
    client._sleep = sleeps.append
    transport.failures = [_unavailable() for _ in range(10)]
    with pytest.raises(ServerUnavailableError, match="connection refused"):
        client.rerank(["u0"], [[100]])
    assert sleeps == [0.1, 0.2, 0.4]
    assert client.stats.retries == 3 and client.stats.failures == 1


def test_infer_does_not_retry_when_server_says_invalid_argument(rerank) -> None:
    client, transport = rerank
    client.fetch_model_info()
    sleeps: list[float] = []
    client._sleep = sleeps.append
    transport.failures = [to_client_error(
        InferenceServerException("bad shape", status="StatusCode.INVALID_ARGUMENT"), "infer")]
    with pytest.raises(InferenceError, match="bad shape") as info:
        client.rerank(["u0"], [[100]])
    assert info.value.status == "StatusCode.INVALID_ARGUMENT"
    assert sleeps == [] and client.stats.retries == 0 and client.stats.failures == 1


def test_config_fetch_retries_when_server_is_starting() -> None:
    client, transport = make_client(contract.GRAPH_RERANK)
    transport.failures = [_unavailable()]
    assert client.model_info.graph_kind == contract.GRAPH_RERANK
    assert client.stats.retries == 1


@pytest.mark.parametrize(
    "error, expected, status",
    [
        (InferenceServerException("x", status="StatusCode.UNAVAILABLE"),
         ServerUnavailableError, "StatusCode.UNAVAILABLE"),
        (InferenceServerException("x", status="503"), ServerUnavailableError, "503"),
        (InferenceServerException("decoding the response: <html>502 Bad Gateway", status="502"),
         ServerUnavailableError, "502"),
        (InferenceServerException("504 Gateway Time-out", status="504"),
         ServerUnavailableError, "504"),
        (HTTPConnectionClosed("connection closed."), ServerUnavailableError,
         "HTTPConnectionClosed"),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError,
         "ConnectionRefusedError"),
        (InferenceServerException("Request for unknown model: 'm' is not found",
                                  status="StatusCode.NOT_FOUND"), ModelNotFoundError,
         "StatusCode.NOT_FOUND"),
        (InferenceServerException("Request for unknown model: 'm' is not found",
                                  status="400"), ModelNotFoundError, "400"),
        (InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"),
         InferenceError, "StatusCode.INVALID_ARGUMENT"),
        (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"),
         InferenceError, "StatusCode.DEADLINE_EXCEEDED"),
        (TimeoutError("timed out"), InferenceError, "timeout"),
    ],
)
def test_to_client_error_maps_status_when_tritonclient_raises(error, expected, status) -> None:
    mapped = to_client_error(error, "model 'm': infer")
    assert type(mapped) is expected and mapped.status == status
    assert str(mapped).startswith("model 'm': infer: ")


class _Raising:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    get_model_config = infer

    def close(self) -> None:
        pass


@pytest.mark.parametrize("cls", [GrpcTransport, HttpTransport])
def test_transport_chains_tritonclient_error_when_infer_fails(cls: type) -> None:
    transport = cls("127.0.0.1:1", "mf", "", 1.0)
    transport.close()
    original = InferenceServerException("nope", status="StatusCode.UNAVAILABLE")
    transport._client = _Raising(original)
    with pytest.raises(ServerUnavailableError) as info:
        transport.infer({contract.USER_ID: np.zeros((1, 1), np.int64)}, [contract.TOP_SCORES])
    assert info.value.__cause__ is original
    with pytest.raises(ServerUnavailableError):
        transport.get_config()


def test_client_closes_transport_when_context_exits() -> None:
    client, transport = make_client(contract.GRAPH_RERANK)
    with client:
        pass
    assert transport.closed


# -- vocabularies -----------------------------------------------------------------------------
def _publish(root: Path, model: str, version: int, users: list, items: list) -> Path:
    folder = root / model / str(version)
    folder.mkdir(parents=True)
    Vocabulary(users).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(items).save(folder / contract.ITEM_VOCAB_FILE)
    return folder


def test_load_vocabularies_picks_highest_version_when_given_repository_root(tmp_path) -> None:
    _publish(tmp_path, "mf", 1, ["a"], [1])
    _publish(tmp_path, "mf", 10, ["a", "b"], [1, 2])
    _publish(tmp_path, "mf", 2, ["a", "b", "c"], [1, 2, 3])
    assert len(load_vocabularies(tmp_path, "mf").users) == 2
    assert len(load_vocabularies(tmp_path / "mf").users) == 2
    assert len(load_vocabularies(tmp_path / "mf" / "2").users) == 3
    assert len(load_vocabularies(tmp_path, "mf", model_version="1").users) == 1


def test_load_vocabularies_raises_invalid_request_when_files_are_missing(tmp_path) -> None:
    with pytest.raises(InvalidRequestError, match="No vocabulary files"):
        load_vocabularies(tmp_path, "mf")


def test_client_loads_vocabularies_from_folder_when_path_is_given(tmp_path) -> None:
    _publish(tmp_path, "mf_rerank", 3, list(USER_VOCAB.ids), list(ITEM_VOCAB.ids))
    client, transport = make_client(contract.GRAPH_RERANK, vocabularies=tmp_path)
    transport.version = "3"
    assert client.rerank(["u3"], [[120]]).item_ids[0, 0] == 120
    assert client.vocabularies.users == USER_VOCAB


def test_client_raises_contract_error_when_vocabulary_size_differs_from_model(tmp_path) -> None:
    _publish(tmp_path, "mf_rerank", 1, ["only"], list(ITEM_VOCAB.ids))
    client, _ = make_client(contract.GRAPH_RERANK, vocabularies=tmp_path, legacy=True)
    with pytest.raises(ModelContractError, match="user vocabulary has 1 ids but model "
                       "'mf_rerank' has num_users=4"):
        _ = client.model_info


# -- async client ----------------------------------------------------------------------------
def test_async_client_matches_sync_client_when_chunked_and_retried() -> None:
    config = grpc_json(config_message(contract.GRAPH_RETRIEVE, max_batch_size=2))
    transport = AsyncFakeTransport(config, contract.GRAPH_RETRIEVE)
    transport.failures = [_unavailable()]
    sync, _ = make_client(contract.GRAPH_RETRIEVE, config=config)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> Any:
        async with AsyncRecommenderClient("fake:0", "mf_retrieve", vocabularies=VOCABS,
                                          transport=transport) as client:
            client._sleep = fake_sleep
            client._random = lambda: 0.0  # no jitter
            with pytest.raises(RecommenderError, match="fetch_model_info"):
                _ = client.model_info
            result = await client.recommend(["u0", "u1", "u2"], k=3, exclude=[[100], [], []])
            with pytest.raises(InvalidRequestError, match=_re("Call `recommend()` instead")):
                await client.rerank(["u0"], [[100]])
            config_json = await client.get_model_config()
            return result, client.stats, config_json

    result, stats, config_json = asyncio.run(main())
    expected = sync.recommend(["u0", "u1", "u2"], k=3, exclude=[[100], [], []])
    np.testing.assert_array_equal(result.item_ids, expected.item_ids)
    np.testing.assert_array_equal(result.scores, expected.scores)
    assert [len(r[contract.USER_ID]) for r in transport.requests] == [2, 1]
    assert stats.retries == 1 and sleeps == [0.1]
    assert config_json == sync.get_model_config()
    assert transport.closed


def test_async_client_raises_invalid_request_when_protocol_is_http() -> None:
    with pytest.raises(InvalidRequestError, match="'grpc' only"):
        AsyncRecommenderClient("127.0.0.1:1", "mf", protocol="http")


# -- CLI --------------------------------------------------------------------------------------
@pytest.fixture()
def fake_cli_client(monkeypatch) -> Callable[[str], None]:
    def install(kind: str) -> None:
        def factory(url: str, model: str, **options: Any) -> RecommenderClient:
            options["vocabularies"] = VOCABS if options["vocabularies"] else None
            return make_client(kind, **options)[0]

        monkeypatch.setattr(cli, "RecommenderClient", factory)

    return install


def _run_cli(argv: list[str]) -> int:
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_prints_table_with_titles_when_rerank_succeeds(fake_cli_client, tmp_path, capsys):
    fake_cli_client(contract.GRAPH_RERANK)
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n110,"Heat, 1995",Action\n150,Up (2009),Ani\n')
    code = _run_cli(["--model", "mf_rerank", "--user", "u1", "--candidates", "110,150",
                     "--vocab-dir", str(tmp_path), "--items-csv", str(movies), "--k", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["user", "rank", "item", "title", "score"]
    assert len(out) == 3 and {"Heat, 1995" in out[1] or "Heat, 1995" in out[2]} == {True}
    assert out[1].split()[:2] == ["u1", "1"]


def test_cli_uses_dense_ids_when_no_vocab_dir(fake_cli_client, capsys) -> None:
    fake_cli_client(contract.GRAPH_RETRIEVE)
    assert _run_cli(["--model", "mf_retrieve", "--user", "0", "--k", "3", "--exclude", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


@pytest.mark.parametrize(
    "kind, argv, message",
    [
        (contract.GRAPH_RERANK, ["--user", "ghost", "--candidates", "110", "--vocab-dir", "."],
         "error: `user_ids`: Unknown user id 'ghost'"),
        (contract.GRAPH_RERANK, ["--user", "0"], "pass --candidates"),
        (contract.GRAPH_RETRIEVE, ["--user", "x"],
         "without --vocab-dir ids of a dense-index model are dense"),
        (contract.GRAPH_RETRIEVE, ["--user", "0", "--k", "99"], "Received: k=99"),
        (contract.GRAPH_RETRIEVE, ["--user", "0", "--items-csv", "/no/such.csv"],
         "No such file"),
    ],
)
def test_cli_exits_1_with_message_and_no_traceback_when_user_errs(
    fake_cli_client, capsys, kind, argv, message
) -> None:
    fake_cli_client(kind)
    assert _run_cli(["--model", f"mf_{kind}", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_exits_1_when_server_is_down(capsys) -> None:
    code = cli.main(["--url", "127.0.0.1:1", "--model", "mf", "--user", "0", "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: model 'mf': config:") and "Traceback" not in err


# -- review fixes -------------------------------------------------------------------------------
def test_async_client_fetches_config_once_when_first_requests_run_concurrently() -> None:
    class SlowConfig(AsyncFakeTransport):
        async def get_config(self) -> dict[str, Any]:  # type: ignore[override]
            await asyncio.sleep(0.01)  # a network round trip: other requests start meanwhile
            return FakeTransport.get_config(self)

    transport = SlowConfig(grpc_json(config_message(contract.GRAPH_RETRIEVE)),
                           contract.GRAPH_RETRIEVE)

    async def main() -> list[Any]:
        async with AsyncRecommenderClient("fake:0", "mf_retrieve", transport=transport) as c:
            return await asyncio.gather(*(c.recommend([u], k=2, raw_ids=False)
                                          for u in range(NUM_USERS)))

    results = asyncio.run(main())
    assert [r.item_ids.shape for r in results] == [(1, 2)] * NUM_USERS
    assert transport.config_calls == 1


@pytest.mark.parametrize("module", [
    "client", "client._codec", "client._ids", "client._retry", "client._transport",
    "client.admin", "client.aio", "client.cli", "client.errors", "client.model_info",
    "client.recommender_client", "client.vocabularies", "kmr.vocabulary",
])
def test_docstring_examples_run_when_collected_by_doctest(module: str) -> None:
    import doctest
    import importlib

    failed, attempted = doctest.testmod(importlib.import_module(module),
                                        optionflags=doctest.ELLIPSIS)
    assert failed == 0 and attempted > 0


def test_int_vocabulary_refuses_non_decimal_text_as_unknown_id_when_raw_ids(retrieve) -> None:
    client, transport = retrieve
    client.recommend(["u1"], exclude=[["100", "110", 120]])  # canonical text is an int id
    assert transport.requests[0][contract.EXCLUDE_ITEM_IDS].tolist() == [[0, 1, 2]]
    # Not the canonical text of an int: not an id of an int vocabulary (raw ids are exact).
    for text in ("0100", " 110 ", "+120", "--100", "²", "٣", "1e2"):
        with pytest.raises(UnknownRawIdError, match="Unknown item id"):
            client.recommend(["u1"], exclude=[[text]])


def test_str_vocabulary_maps_numpy_and_python_ints_to_their_text_when_raw_ids() -> None:
    vocab = Vocabulary(["7", "007"])
    assert vocab.to_indices([np.int64(7), 7, "007", np.str_("7")]).tolist() == [0, 0, 1, 0]
    with pytest.raises(UnknownIdError):
        vocab.to_indices([8])


def test_cli_passes_tls_options_and_headers_to_the_client(monkeypatch, pem_files, capsys):
    made: dict[str, Any] = {}

    def factory(url: str, model: str, **options: Any) -> RecommenderClient:
        made.update(options, url=url)
        options["vocabularies"] = None
        return make_client(contract.GRAPH_RETRIEVE, **options)[0]

    monkeypatch.setattr(cli, "RecommenderClient", factory)
    code = cli.main(["--url", "h:443", "--model", "mf_retrieve", "--user", "0", "--ssl",
                     "--root-certificates", str(pem_files["ca"]),
                     "--private-key", str(pem_files["key"]),
                     "--certificate-chain", str(pem_files["chain"]),
                     "--header", "Authorization=Bearer a=b", "--header", "x-api-key=k"])
    assert code == 0, capsys.readouterr().err
    assert made["ssl"] is True and made["root_certificates"] == pem_files["ca"]
    assert (made["private_key"], made["certificate_chain"]) == (pem_files["key"],
                                                               pem_files["chain"])
    assert made["headers"] == {"Authorization": "Bearer a=b", "x-api-key": "k"}
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["user", "rank", "item", "score"]  # no titles: no title column


@pytest.fixture()
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "key", "chain")}
    for path in files.values():
        path.write_text("-----BEGIN X-----\n-----END X-----\n", encoding="utf-8")
    return files


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ssl", "--private-key", "{key}"], "mutual TLS needs both"),
        (["--root-certificates", "{ca}"], "certificates are only used with TLS"),
        (["--ssl", "--root-certificates", "/no/such/ca.pem"], "'/no/such/ca.pem' does not "
         "exist"),
        (["--header", "a=1", "--header", "A=2"], "--header 'A' is given twice"),
        (["--header", "bad name=1"], "non-empty HTTP tokens"),
    ],
)
def test_cli_exits_1_with_message_when_tls_or_header_options_are_bad(
    fake_cli_client, pem_files, capsys, argv, message
) -> None:
    fake_cli_client(contract.GRAPH_RETRIEVE)
    argv = [a.format(**pem_files) for a in argv]
    assert _run_cli(["--model", "mf_retrieve", "--user", "0", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_exits_2_with_usage_when_header_has_no_equals_sign(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--model", "m", "--user", "0", "--header", "authorization"])
    assert info.value.code == 2
    assert "--header: expected KEY=VALUE. Received: 'authorization'" in capsys.readouterr().err


def test_cli_refuses_exclude_when_model_reranks(fake_cli_client, capsys) -> None:
    fake_cli_client(contract.GRAPH_RERANK)
    assert _run_cli(["--model", "mf_rerank", "--user", "0", "--candidates", "1,2",
                     "--exclude", "1"]) == 1
    assert "--exclude, --nprobe and --rescore are for retrieve models" in capsys.readouterr().err


def test_cli_help_lists_tls_and_header_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage: python -m client")
    for flag in ("--ssl", "--root-certificates PEM", "--private-key PEM",
                 "--certificate-chain PEM", "--header KEY=VALUE"):
        assert flag in out
