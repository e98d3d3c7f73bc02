"""The exported graphs carry their vocabularies: onnxruntime parity in raw ids, and the rules."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from export.api import ExportOptions, export_model
from export.errors import ExportError
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import export_tiny_both

USERS = ["007", "7", "", "ü"]
ITEMS = [f"{i:05d}" for i in range(29)] + ["-1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny_both(tmp_path_factory.mktemp("raw"), "r", USERS, ITEMS)


def _session(version_dir) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / contract.ONNX_FILE),
                                providers=["CPUExecutionProvider"])


def _run(version_dir, kind: str, feed: dict) -> dict:
    names = list(contract.OUTPUTS[kind])
    return dict(zip(names, _session(version_dir).run(names, feed), strict=True))


def test_rerank_graph_in_raw_ids_matches_keras_model_when_fed_raw_ids(exported):
    model, _, dirs = exported
    rng = np.random.default_rng(0)
    users = np.arange(len(USERS))
    items = rng.integers(0, len(ITEMS), (len(USERS), 8))
    positions, scores = model([users, items])
    out = _run(dirs[contract.GRAPH_RERANK], contract.GRAPH_RERANK, {
        contract.USER_ID: np.array([USERS[u] for u in users], dtype=object),
        contract.ITEM_IDS: np.array([[ITEMS[i] for i in row] for row in items], dtype=object),
    })
    want_positions = np.asarray(positions)[:, :5]
    np.testing.assert_array_equal(out[contract.TOP_POSITIONS], want_positions)
    want_ids = np.take_along_axis(items, want_positions, axis=1)
    assert out[contract.TOP_ITEM_IDS].tolist() == [[ITEMS[i] for i in r] for r in want_ids]
    np.testing.assert_allclose(out[contract.TOP_SCORES], np.asarray(scores)[:, :5],
                               rtol=1e-5, atol=1e-6)
    assert out[contract.NUM_RESULTS].tolist() == [[5]] * len(USERS)


def test_retrieve_graph_in_raw_ids_matches_numpy_when_exclusions_are_raw(exported):
    model, _, dirs = exported
    user_table, item_table = (w.numpy() for w in model.get_layer("embedding").weights)
    scores = user_table @ item_table.T / np.sqrt(6)
    best = np.argsort(-scores, axis=1, kind="stable")
    exclude = [[ITEMS[best[u, 0]], "not-an-item"] for u in range(len(USERS))]
    out = _run(dirs[contract.GRAPH_RETRIEVE], contract.GRAPH_RETRIEVE, {
        contract.USER_ID: np.array(USERS, dtype=object),
        contract.EXCLUDE_ITEM_IDS: np.array(exclude, dtype=object),
    })
    want = [[ITEMS[i] for i in row[1:6]] for row in best]  # best one excluded, unknown ignored
    assert out[contract.TOP_ITEM_IDS].tolist() == want


def test_unknown_user_gets_empty_row_with_reserved_ids_when_fed_raw(exported):
    _, _, dirs = exported
    out = _run(dirs[contract.GRAPH_RETRIEVE], contract.GRAPH_RETRIEVE, {
        contract.USER_ID: np.array(["nobody", "7"], dtype=object),
        contract.EXCLUDE_ITEM_IDS: np.full((2, 1), contract.PAD_STR, dtype=object),
    })
    assert out[contract.NUM_RESULTS].tolist() == [[0], [5]]
    assert out[contract.TOP_ITEM_IDS][0].tolist() == [contract.PAD_STR] * 5
    assert (out[contract.TOP_SCORES][0] == np.float32(contract.EMPTY_SCORE)).all()
    assert np.isfinite(out[contract.TOP_SCORES]).all()  # valid JSON over HTTP


def test_version_files_hold_perf_analyzer_data_with_known_ids_when_exported(exported):
    _, _, dirs = exported
    data = json.loads((dirs[contract.GRAPH_RERANK] / "perf_analyzer_data.json").read_text())
    rows = data["data"]
    assert len(rows) == 16
    for row in rows:
        assert row[contract.USER_ID]["content"][0] in USERS
        assert set(row[contract.ITEM_IDS]["content"]) <= set(ITEMS)
        assert row[contract.ITEM_IDS]["shape"] == [len(row[contract.ITEM_IDS]["content"])]


def test_index_option_keeps_dense_indices_when_asked(exported, tmp_path):
    _, path, _ = exported
    result = export_model(path, tmp_path / "repo",
                          ExportOptions(name="d", graph="rerank", k=3, ids="index"))
    out = _run(result.models[0].version_dir, contract.GRAPH_RERANK, {
        contract.USER_ID: np.array([0, 99]), contract.ITEM_IDS: np.array([[1, 2], [1, 2]])})
    assert out[contract.TOP_ITEM_IDS][1].tolist() == [-1, -1, -1]  # unknown user: empty row
    assert out[contract.NUM_RESULTS].tolist() == [[2], [0]]
    manifest = json.loads((result.models[0].version_dir / "export_manifest.json").read_text())
    assert manifest["id_kind"] == "index" and manifest["num_items"] == len(ITEMS)


def test_export_refuses_a_new_version_when_model_level_settings_change(exported, tmp_path):
    _, path, _ = exported
    export_model(path, tmp_path / "repo", ExportOptions(name="m", k=3))
    with pytest.raises(ExportError, match=r"k: 3 -> 4"):
        export_model(path, tmp_path / "repo", ExportOptions(name="m", k=4))
    with pytest.raises(ExportError, match=r"id_kind: 'str' -> 'index'"):
        export_model(path, tmp_path / "repo", ExportOptions(name="m", k=3, ids="index"))
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["1", "config.pbtxt"]


@pytest.mark.parametrize(("users", "items", "message"), [
    (["a", "b", "c", "d"], [f"i{i}" for i in range(29)] + [contract.PAD_STR],
     "served models reserve"),
    ([0, 1, 2, 3], list(range(29)) + [contract.PAD_INT], "served models reserve"),
])
def test_export_refuses_vocabulary_when_raw_ids_cannot_be_served(exported, tmp_path, users,
                                                                 items, message):
    _, path, _ = exported
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.keras").write_bytes(path.read_bytes())
    Vocabulary(users).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(items).save(folder / contract.ITEM_VOCAB_FILE)
    with pytest.raises(ExportError, match=message):
        export_model(folder / "model.keras", tmp_path / "repo", ExportOptions(k=3))
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_int_ids_are_served_as_their_text_when_users_and_items_differ_in_kind(exported,
                                                                             tmp_path):
    _, path, _ = exported
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.keras").write_bytes(path.read_bytes())
    Vocabulary(["a", "b", "c", "d"]).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(list(range(100, 130))).save(folder / contract.ITEM_VOCAB_FILE)
    result = export_model(folder / "model.keras", tmp_path / "repo",
                          ExportOptions(graph="rerank", k=2))
    out = _run(result.models[0].version_dir, contract.GRAPH_RERANK, {
        contract.USER_ID: np.array(["b"], dtype=object),
        contract.ITEM_IDS: np.array([["101", "129", "7"]], dtype=object)})
    assert set(out[contract.TOP_ITEM_IDS][0].tolist()) == {"101", "129"}  # "7" is unknown


def test_contiguous_int_ids_need_no_table_when_ids_are_a_range(exported, tmp_path):
    import onnx

    _, path, _ = exported
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.keras").write_bytes(path.read_bytes())
    Vocabulary([-2, -1, 0, 1]).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(list(range(1000, 1030))).save(folder / contract.ITEM_VOCAB_FILE)
    result = export_model(folder / "model.keras", tmp_path / "repo",
                          ExportOptions(graph="both", k=3))
    rerank, retrieve = (m.version_dir for m in result.models)
    proto = onnx.load(str(rerank / contract.ONNX_FILE), load_external_data=False)
    assert not [n for n in proto.graph.node if n.op_type in ("LabelEncoder", "Gather")
                and n.name.startswith("served_ids_")]
    assert not [i for i in proto.graph.initializer if i.name == "served_ids_raw_items"]
    huge = [contract.PAD_INT, 2**63 - 1, 999, 1030]  # unknown: wrap-around stays unknown
    out = _run(rerank, contract.GRAPH_RERANK, {
        contract.USER_ID: np.array([-2, 2**63 - 1, contract.PAD_INT, 1]),
        contract.ITEM_IDS: np.array([[1001, 1029, *huge]] * 4)})
    assert out[contract.NUM_RESULTS][:, 0].tolist() == [2, 0, 0, 2]
    assert set(out[contract.TOP_ITEM_IDS][0, :2].tolist()) == {1001, 1029}
    assert out[contract.TOP_ITEM_IDS][1].tolist() == [contract.PAD_INT] * 3
    out = _run(retrieve, contract.GRAPH_RETRIEVE, {
        contract.USER_ID: np.array([0]),
        contract.EXCLUDE_ITEM_IDS: np.array([[contract.PAD_INT, 1000]])})
    assert 1000 not in out[contract.TOP_ITEM_IDS][0].tolist()
    assert all(1000 <= i < 1030 for i in out[contract.TOP_ITEM_IDS][0].tolist())


def test_large_trained_vocabulary_is_size_checked_when_baked_into_the_graph(
        exported, tmp_path, monkeypatch):
    import export.vocabularies as vocabularies

    _, path, _ = exported
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "model.keras").write_bytes(path.read_bytes())
    Vocabulary(USERS).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(ITEMS[:-1]).save(folder / contract.ITEM_VOCAB_FILE)  # one id short
    monkeypatch.setattr(vocabularies, "_CHECK_MAX_BYTES", 0)  # "too large to check early"
    with pytest.raises(ExportError, match=f"has {len(ITEMS) - 1} ids but the model has "
                                          f"{len(ITEMS)} rows"):
        export_model(folder / "model.keras", tmp_path / "repo", ExportOptions(k=3))
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
