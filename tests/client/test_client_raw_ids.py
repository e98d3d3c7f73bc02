"""Unit tests of the issue-15 contract: raw-id models, num_results, per-version vocabularies.

The fake transport of test_client_unit answers like a served graph of each id kind (its
vocabularies baked in, as export bakes them into the ONNX graph) and as a given version.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client import (
    AsyncRecommenderClient,
    InvalidRequestError,
    ModelContractError,
    UnknownRawIdError,
    Vocabularies,
    cli,
)
from client._transport import InferAnswer, _result_version, answer_version
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.client.test_client_unit import (
    INT_ITEMS,
    INT_USERS,
    ITEM_VOCAB,
    ITEMS,
    STR_ITEMS,
    STR_USERS,
    USER_VOCAB,
    USERS,
    AsyncFakeTransport,
    K,
    _publish,
    config_message,
    grpc_json,
    make_client,
    reference_answer,
)

INT, STR = contract.IDS_INT, contract.IDS_STR
PAD = contract.PAD_STR.encode("utf-8")  # how a str model's padding travels
RERANK, RETRIEVE = contract.GRAPH_RERANK, contract.GRAPH_RETRIEVE


def raw_client(kind: str, id_kind: str, **options: Any):
    options.setdefault("vocabularies", None)
    return make_client(kind, id_kind=id_kind, **options)


def expected_rerank(user: int, items: list[int], table: list[Any]) -> list[Any]:
    """Raw ids of the best candidates (dense user / item positions in the baked tables)."""
    scores = ITEMS[items] @ USERS[user]
    return [table[items[i]] for i in np.argsort(-scores, kind="stable")][:K]


# -- int raw ids ---------------------------------------------------------------------------
def test_int_model_sends_raw_ids_exactly_and_returns_python_ints_when_ids_are_odd() -> None:
    client, transport = raw_client(RERANK, INT)
    users = [-1, 2**62, "439708184"]  # negative, huge, canonical text
    candidates = [[-1, 0, 7], [2**62, -(2**40), "439708184"], [12, 13, -1]]
    result = client.rerank(users, candidates)
    sent = transport.requests[0]
    assert sent[contract.USER_ID].dtype == np.int64 and sent[contract.USER_ID].shape == (3, 1)
    assert sent[contract.USER_ID][:, 0].tolist() == [-1, 2**62, 439708184]
    assert sent[contract.ITEM_IDS].tolist()[1] == [2**62, -(2**40), 439708184]
    assert result.item_indices is None and result.item_ids.dtype == object
    for b, (user, row) in enumerate(zip([0, 2, 3], [[0, 1, 2], [3, 4, 5], [6, 7, 0]],
                                        strict=True)):
        top = expected_rerank(user, row, INT_ITEMS)
        assert result.item_ids[b, :3].tolist() == top
        assert all(type(v) is int for v in top)
        assert result.item_ids[b, 3:].tolist() == [None] * (K - 3)
    assert result.num_results.tolist() == [3, 3, 3]
    assert result.valid[:, :3].all() and not result.valid[:, 3:].any()
    assert -1 in result.item_ids[0].tolist()  # -1 is a real item here, and valid
    assert np.isneginf(result.scores[:, 3:]).all() and np.isfinite(result.scores[:, :3]).all()
    assert result.model_version == "1"


@pytest.mark.parametrize("bad", ["007", "+7", " 7", "7.0", 7.0, True, 2**63, "", b"7"])
def test_int_model_refuses_ids_that_are_not_canonical_int64_naming_the_value(bad) -> None:
    client, transport = raw_client(RERANK, INT)
    with pytest.raises(InvalidRequestError, match=_re_value(bad)):
        client.rerank([0], [[7, bad]])
    with pytest.raises(InvalidRequestError, match=_re_value(bad)):
        client.rerank([bad], [[7]])
    assert transport.requests == []


def _re_value(value: Any) -> str:
    import re

    return re.escape(f"{value!r} is not an int id")


def test_int_model_answers_unknown_ids_in_graph_when_no_vocabularies() -> None:
    client, transport = raw_client(RETRIEVE, INT)
    result = client.recommend([555, 0], exclude=[[999, 7, -1], []], k=K)
    assert result.num_results.tolist() == [0, K]  # unknown user: an all-empty row
    assert result.item_ids[0].tolist() == [None] * K and np.isneginf(result.scores[0]).all()
    assert result.valid[0].tolist() == [False] * K
    result = client.recommend([0, 0], exclude=[[999, 7, -1], []])  # unknown exclusion: ignored
    assert 7 not in result.item_ids[0].tolist() and -1 not in result.item_ids[0].tolist()
    sent = transport.requests[-1][contract.EXCLUDE_ITEM_IDS]
    assert sent.tolist() == [[999, 7, -1], [contract.PAD_INT] * 3]  # padded with PAD_INT


def test_rerank_never_returns_an_unknown_candidate_when_no_vocabularies() -> None:
    client, _ = raw_client(RERANK, INT)
    result = client.rerank([0], [[12345, 7, contract.PAD_INT]])
    assert result.num_results.tolist() == [1] and result.item_ids[0, 0] == 7
    assert result.positions[0].tolist() == [1] + [-1] * (K - 1)


# -- str raw ids ---------------------------------------------------------------------------
def test_str_model_keeps_leading_zeros_and_empty_ids_apart_when_sending_and_decoding() -> None:
    client, transport = raw_client(RERANK, STR)
    result = client.rerank(["001", "1", ""], [["0439708184", "439708184", ""]] * 3)
    sent = transport.requests[0]
    assert sent[contract.USER_ID][:, 0].tolist() == [b"001", b"1", b""]
    assert sent[contract.ITEM_IDS][0].tolist() == [b"0439708184", b"439708184", b""]
    for b, user in enumerate([0, 1, 2]):
        assert result.item_ids[b, :3].tolist() == expected_rerank(user, [0, 1, 2], STR_ITEMS)
    assert set(result.item_ids[0, :3]) == {"0439708184", "439708184", ""}
    assert result.num_results.tolist() == [3, 3, 3] and result.item_indices is None
    assert result.user_ids.tolist() == ["001", "1", ""]


def test_str_model_sends_ints_as_their_text_and_pads_exclusions_with_pad_str() -> None:
    client, transport = raw_client(RETRIEVE, STR)
    client.recommend(["u3", 1], exclude=[[-1, "0", "nope"], []])
    sent = transport.requests[0]
    assert sent[contract.USER_ID][:, 0].tolist() == [b"u3", b"1"]
    assert sent[contract.EXCLUDE_ITEM_IDS].tolist() == [[b"-1", b"0", b"nope"], [PAD] * 3]
    result = client.recommend(["u3"], exclude=[["-1", "0"]])
    assert not {"-1", "0"} & set(result.item_ids[0].tolist())


def test_str_model_refuses_floats_and_bools_and_accepts_numpy_strings() -> None:
    client, transport = raw_client(RETRIEVE, STR)
    for bad in (1.5, True):
        with pytest.raises(InvalidRequestError, match="is not a str id"):
            client.recommend([bad])
    assert client.recommend(np.array(["001"])).num_results.tolist() == [K]


@pytest.mark.parametrize("id_kind", [INT, STR])
def test_raw_id_model_refuses_raw_ids_false_explaining_why(id_kind) -> None:
    client, transport = raw_client(RETRIEVE, id_kind)
    with pytest.raises(InvalidRequestError, match=f"speaks raw ids \\(id_kind='{id_kind}'\\)"):
        client.recommend([0], raw_ids=False)
    assert transport.requests == []


def test_raw_id_model_keeps_size_and_shape_checks_when_ids_are_raw() -> None:
    client, transport = raw_client(RERANK, STR)
    with pytest.raises(InvalidRequestError, match="ragged"):
        client.rerank(["a", "b"], [["a", "b"], ["c"]])
    with pytest.raises(InvalidRequestError, match="max_candidates=6"):
        client.rerank(["a"], [["x"] * 7])
    client, _ = raw_client(RETRIEVE, INT)
    with pytest.raises(InvalidRequestError, match="max_exclude=3"):
        client.recommend([0], exclude=[[1, 2, 3, 4]])
    assert transport.requests == []


# -- vocabularies with raw-id models: checks before sending ----------------------------------
@pytest.mark.parametrize("id_kind", [INT, STR])
def test_vocabularies_make_unknown_users_and_candidates_raise_before_sending(id_kind) -> None:
    users, items = (INT_USERS, INT_ITEMS) if id_kind == INT else (STR_USERS, STR_ITEMS)
    vocabs = Vocabularies(Vocabulary(users, "user id"), Vocabulary(items, "item id"))
    client, transport = raw_client(RERANK, id_kind, vocabularies=vocabs)
    ghost = 424242 if id_kind == INT else "0001"
    with pytest.raises(UnknownRawIdError, match="`user_ids`: Unknown user id"):
        client.rerank([ghost], [[items[0]]])
    with pytest.raises(UnknownRawIdError, match="`candidate_item_ids`: Unknown item id"):
        client.rerank([users[0]], [[items[0], ghost]])
    assert transport.requests == []
    pad = contract.PAD_INT if id_kind == INT else contract.PAD_STR
    assert client.rerank([users[0]], [[items[0], pad]]).num_results.tolist() == [1]


def test_vocabularies_drop_unknown_exclusions_and_count_them_when_model_is_raw() -> None:
    vocabs = Vocabularies(Vocabulary(STR_USERS, "user id"), Vocabulary(STR_ITEMS, "item id"))
    client, transport = raw_client(RETRIEVE, STR, vocabularies=vocabs)
    client.recommend(["", "1"], exclude=[["a", "zz", "0439708184", "439708184x"], ["q"]])
    assert transport.requests[0][contract.EXCLUDE_ITEM_IDS].tolist() == [
        [b"a", b"0439708184"], [PAD, PAD]]
    assert client.stats.unknown_exclusions == 3


# -- num_results and the answer's consistency ------------------------------------------------
WIRE = {  # one user, one candidate, as each kind sends them
    INT: ([INT_USERS[0]], [INT_ITEMS[2]], np.int64),
    STR: ([STR_USERS[0]], [STR_ITEMS[2]], object),
    contract.IDS_INDEX: ([0], [2], np.int64),
}


@pytest.mark.parametrize("id_kind", [INT, STR, contract.IDS_INDEX])
@pytest.mark.parametrize("count, match", [(2, "slot 1 is empty"), (0, "slot 0 holds an item"),
                                          (K + 1, "expected a count in")])
def test_answer_raises_contract_error_when_num_results_disagrees_with_ids(
    id_kind, count, match, monkeypatch
) -> None:
    client, transport = raw_client(RERANK, id_kind)
    user, items, dtype = WIRE[id_kind]
    encode = (lambda v: v.encode()) if id_kind == STR else (lambda v: v)
    inputs = {contract.USER_ID: np.array([[encode(user[0])]], dtype=dtype),
              contract.ITEM_IDS: np.array([[encode(items[0])]], dtype=dtype)}
    answer = reference_answer(RERANK, inputs, id_kind)
    assert answer[contract.NUM_RESULTS].tolist() == [[1]]
    answer[contract.NUM_RESULTS] = np.array([[count]])
    monkeypatch.setattr(transport, "infer", lambda i, o: InferAnswer(answer, "1"))
    with pytest.raises(ModelContractError, match=match):
        client.rerank(user, [items], raw_ids=id_kind != contract.IDS_INDEX)


def test_empty_score_becomes_minus_inf_and_row_counts_come_from_num_results() -> None:
    client, transport = raw_client(RERANK, INT)
    answer = reference_answer(RERANK, {contract.USER_ID: np.array([[0]]),
                                       contract.ITEM_IDS: np.array([[7, 12345]])}, INT)
    assert answer[contract.TOP_SCORES][0, 1] == np.float32(contract.EMPTY_SCORE)
    result = client.rerank([0], [[7, 12345]], k=3)
    assert result.scores[0, 1:].tolist() == [-np.inf, -np.inf]
    assert result.num_results.tolist() == [1] and result.item_ids[0].tolist() == [7, None, None]


# -- versions --------------------------------------------------------------------------------
def test_transport_reads_model_version_from_grpc_and_http_results() -> None:
    class Grpc:
        def get_response(self):
            return type("Response", (), {"model_version": "7"})()

    class Http:
        def get_response(self):
            return {"model_name": "m", "model_version": "8", "outputs": []}

    assert (_result_version(Grpc()), _result_version(Http()), _result_version(object())) == (
        "7", "8", "")
    assert answer_version({"a": 1}) == "" and answer_version(InferAnswer({}, "3")) == "3"


V2_USERS = Vocabulary(list(USER_VOCAB.ids)[::-1], name="user id")
V2_ITEMS = Vocabulary(list(ITEM_VOCAB.ids)[::-1], name="item id")
V2_TABLES = (USERS[::-1], ITEMS[::-1])  # a retrain that moved every dense index


def _two_versions(root: Path, model: str = "mf_rerank", *, publish_v2: bool = True) -> None:
    _publish(root, model, 1, list(USER_VOCAB.ids), list(ITEM_VOCAB.ids))
    if publish_v2:
        _publish(root, model, 2, list(V2_USERS.ids), list(V2_ITEMS.ids))


REQUEST = (["u2", "u0", "u3"], [[110, 150, 100], [100, 120, 130], [170, 110, 210]])


def _truth() -> Any:
    """The answer in raw ids, identical for both versions (same raw id -> same vector)."""
    client, _ = make_client(RERANK)
    return client.rerank(*REQUEST)


def test_index_model_decodes_each_answer_with_the_answering_versions_vocabularies(
    tmp_path,
) -> None:
    _two_versions(tmp_path)
    truth = _truth()
    client, transport = make_client(RERANK, vocabularies=tmp_path)
    transport.tables["2"] = V2_TABLES
    transport.version = "1"  # the files' newest is 2: the first chunk is re-encoded for 1
    first = client.rerank(*REQUEST)
    assert first.item_ids.tolist() == truth.item_ids.tolist() and first.model_version == "1"
    assert client.stats.version_resends == 1
    assert transport.requests[-1][contract.USER_ID][:, 0].tolist() == [2, 0, 3]
    transport.version = "2"  # hot swap
    second = client.rerank(*REQUEST)
    assert second.item_ids.tolist() == truth.item_ids.tolist() and second.model_version == "2"
    assert transport.requests[-1][contract.USER_ID][:, 0].tolist() == [1, 3, 0]
    assert client.stats.version_resends == 2 and client.served_version == "2"
    np.testing.assert_array_equal(second.scores, truth.scores)
    assert second.item_indices.tolist() != truth.item_indices.tolist()  # v2's own indices


def test_index_model_chunks_answered_by_two_versions_are_each_decoded_right(tmp_path) -> None:
    _two_versions(tmp_path)
    truth = _truth()
    config = grpc_json(config_message(RERANK, max_batch_size=2))
    client, transport = make_client(RERANK, vocabularies=tmp_path, config=config)
    transport.tables["2"] = V2_TABLES
    transport.versions = ["2", "1", "1"]  # chunk 1 is answered by 1: resent for 1
    result = client.rerank(*REQUEST)
    assert result.item_ids.tolist() == truth.item_ids.tolist()
    assert result.model_version == "1,2" and client.stats.version_resends == 1


def test_index_model_raises_contract_error_when_answering_versions_files_are_missing(
    tmp_path,
) -> None:
    _two_versions(tmp_path, publish_v2=False)
    client, transport = make_client(RERANK, vocabularies=tmp_path)
    transport.tables["2"] = V2_TABLES
    assert client.rerank(*REQUEST).model_version == "1"
    transport.version = "2"
    with pytest.raises(ModelContractError, match="Version 2 of the model answered, but its "
                       "vocabularies are not in"):
        client.rerank(*REQUEST)
    sent = len(transport.requests)
    with pytest.raises(ModelContractError, match="Version 2"):  # refused before sending now
        client.rerank(*REQUEST)
    assert len(transport.requests) == sent


def test_index_model_with_a_vocabularies_object_refuses_another_versions_answer() -> None:
    client, transport = make_client(RERANK)
    assert client.rerank(*REQUEST).model_version == "1"  # binds the object to version 1
    transport.version = "2"
    transport.tables["2"] = V2_TABLES
    with pytest.raises(ModelContractError, match="belong to version 1"):
        client.rerank(*REQUEST)
    assert client.rerank([0], [[1]], raw_ids=False).model_version == "2"  # indices: no decode


def test_pinned_client_raises_contract_error_when_another_version_answers() -> None:
    client, transport = make_client(RERANK, model_version="1", id_kind=INT, vocabularies=None)
    transport.version = "2"
    with pytest.raises(ModelContractError, match="pinned to version 1 but version 2 answered"):
        client.rerank([0], [[7]])


def test_raw_id_model_reports_every_answering_version_when_chunks_differ() -> None:
    config = grpc_json(config_message(RETRIEVE, max_batch_size=1, id_kind=STR))
    client, transport = make_client(RETRIEVE, config=config, id_kind=STR, vocabularies=None)
    transport.versions = ["10", "9", "10"]
    result = client.recommend(["001", "1", ""])
    assert result.model_version == "9,10" and client.stats.version_resends == 0


def test_async_client_resends_a_chunk_for_the_answering_version(tmp_path) -> None:
    _two_versions(tmp_path)
    truth = _truth()
    transport = AsyncFakeTransport(grpc_json(config_message(RERANK, max_batch_size=2)), RERANK)
    transport.tables["2"] = V2_TABLES
    transport.version = "1"

    async def main() -> Any:
        async with AsyncRecommenderClient("fake:0", "mf_rerank", vocabularies=tmp_path,
                                          transport=transport) as client:
            return await client.rerank(*REQUEST), client.stats

    result, stats = asyncio.run(main())
    assert result.item_ids.tolist() == truth.item_ids.tolist()
    assert result.model_version == "1" and stats.version_resends == 2  # both chunks


def test_cli_sends_typed_ids_to_a_raw_id_model_without_vocab_dir(monkeypatch, capsys) -> None:
    def factory(url: str, model: str, **options: Any):
        options["vocabularies"] = None
        return make_client(RETRIEVE, id_kind=STR, **options)[0]

    monkeypatch.setattr(cli, "RecommenderClient", factory)
    code = cli.main(["--model", "mf_retrieve", "--user", "001", "--k", "2", "--exclude",
                     "0439708184"])
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    assert len(lines) == 3 and lines[1].split()[:2] == ["001", "1"]
    assert "0439708184" not in out.out
