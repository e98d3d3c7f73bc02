"""Raw ids in the served graph, as an outside caller sees them (raw tritonclient, HTTP/JSON).

Vocabularies of awkward ids are baked into the exported graphs; a real tritonserver
(python backend running the same model.onnx) must answer with the raw ids of the numpy
reference on the model's own tables, over gRPC and HTTP/JSON, with every documented
outcome for unknown ids, and JSON that a strict parser accepts.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from export.triton.local_server import LocalTritonServer
from kmr import contract
from tests.support.raw_models import K, answered_ids, export_raw_model, raw_infer

pytestmark = pytest.mark.triton
STR_USERS = ["", "007", "7", "u-\u00fc", "user 5"]
STR_ITEMS = ["0439708184", "439708184", "", "x", "-1", "0", "item\u00e9", "7", "a b", "z"]
INT_USERS = [-1, 0, 2**62, 7, -(2**62)]
INT_ITEMS = [-1, 0, 5, 2**62, -(2**62), 9, 10, 11, 12, 13]


@pytest.fixture(scope="module")
def served(triton_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw_ids")
    models = {"str": export_raw_model(tmp, "sid", STR_USERS, STR_ITEMS, 1),
              "int": export_raw_model(tmp, "iid", INT_USERS, INT_ITEMS, 2)}
    with LocalTritonServer(tmp / "repo", installation=triton_home) as server:
        yield server, models, tmp / "repo"


def test_int_retrieve_model_is_served_with_the_compact_lookup(served):
    *_, repo = served
    manifests = {kind: json.loads((repo / f"iid_{kind}" / "1" / "export_manifest.json"
                                   ).read_text()) for kind in contract.GRAPH_KINDS}
    # so the tests below check the minimal perfect hash (retrieve) and the LabelEncoder
    assert manifests[contract.GRAPH_RETRIEVE]["id_lookup"] == {"users": "compact",
                                                               "items": "compact"}
    assert manifests[contract.GRAPH_RERANK]["id_lookup"] == {"users": "label_encoder",
                                                             "items": "label_encoder"}


@pytest.mark.parametrize("kind", ["str", "int"])
def test_served_raw_ids_match_the_models_own_ranking_when_ids_are_awkward(served, kind):
    server, models, _ = served
    model = models[kind]
    for user in model.users.ids:  # "" / "007" / "7" / -1 / 2**62 are all real users
        answer = raw_infer(server, model, kind, contract.GRAPH_RETRIEVE, user, None)
        assert answered_ids(kind, answer) == model.expected(user, None), user
        candidates = list(model.items.ids[:6])
        answer = raw_infer(server, model, kind, contract.GRAPH_RERANK, user, candidates)
        assert answered_ids(kind, answer) == model.expected(user, candidates), user


@pytest.mark.parametrize("kind", ["str", "int"])
def test_unknown_ids_get_their_documented_outcome_when_sent_raw(served, kind):
    server, models, _ = served
    model = models[kind]
    unknown = "no-such-id" if kind == "str" else 123456789
    user = model.users.ids[1]
    # Unknown user: a row with no results (num_results 0), not an error.
    answer = raw_infer(server, model, kind, contract.GRAPH_RETRIEVE, unknown, None)
    assert answered_ids(kind, answer) == []
    # Unknown candidate: never recommended; the known ones are ranked as usual.
    candidates = [unknown, model.items.ids[0], model.items.ids[1]]
    answer = raw_infer(server, model, kind, contract.GRAPH_RERANK, user, candidates)
    assert answered_ids(kind, answer) == model.expected(user, candidates[1:])
    assert answer[contract.TOP_POSITIONS][0, :2].tolist() != [0, 0]
    assert 0 not in answer[contract.TOP_POSITIONS][0, :2].tolist()
    # Unknown exclusion: ignored; a known one is excluded.
    best = model.expected(user, None)[0]
    answer = raw_infer(server, model, kind, contract.GRAPH_RETRIEVE, user, [unknown, best])
    got = answered_ids(kind, answer)
    assert best not in got and len(got) == K


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not valid JSON (RFC 8259): {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("kind", ["str", "int"])
def test_http_json_answer_parses_strictly_when_it_has_padding(served, kind):
    server, models, _ = served
    model = models[kind]
    datatype = "BYTES" if kind == "str" else "INT64"
    body = {"inputs": [
        {"name": contract.USER_ID, "shape": [1, 1], "datatype": datatype,
         "data": [model.users.ids[2]]},
        {"name": contract.ITEM_IDS, "shape": [1, 2], "datatype": datatype,
         "data": list(model.items.ids[:2])},  # 2 candidates < K: two padding slots
    ]}
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model.prefix}_rerank/infer",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode("utf-8")
    parsed = _strict(text)  # raises on -Infinity / NaN
    outputs = {o["name"]: o["data"] for o in parsed["outputs"]}
    assert outputs[contract.NUM_RESULTS] == [2]
    assert sorted(outputs[contract.TOP_ITEM_IDS][:2]) == sorted(model.items.ids[:2])
    assert outputs[contract.TOP_SCORES][2:] == [contract.EMPTY_SCORE] * 2
    assert outputs[contract.TOP_POSITIONS][2:] == [-1, -1]
    with pytest.raises(ValueError, match="RFC 8259"):
        _strict('{"x": -Infinity}')  # the check itself can fail
