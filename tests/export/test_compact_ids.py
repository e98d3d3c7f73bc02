"""The compact id lookup: a minimal perfect hash of int ids, in numpy and in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.api import ExportOptions, export_model
from export.errors import ExportError
from export.onnx.compact_ids import build_compact_lookup, check_with_onnxruntime, encoder_model
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import export_tiny_both, save_artifacts, tiny_model

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def _ids(kind: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "progression":
        return np.arange(n, dtype=np.int64) * 7 + 3
    if kind == "multiples_of_2_20":
        return np.arange(1, n + 1, dtype=np.int64) << 20
    if kind == "runs":
        return np.unique(rng.integers(0, max(1, n // 50), n) * 10**6 + rng.integers(0, 200, n))
    if kind == "extremes":
        return np.unique(np.concatenate([INT64_MAX - np.arange(n // 2, dtype=np.int64) * 3,
                                         INT64_MIN + 1 + np.arange(n // 2, dtype=np.int64)]))
    return np.unique(rng.integers(INT64_MIN + 1, INT64_MAX, n, dtype=np.int64))


def _encode(lookup, queries: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(encoder_model(lookup).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": queries})[0]


@pytest.mark.parametrize("kind", ["progression", "multiples_of_2_20", "runs", "extremes",
                                  "random"])
@pytest.mark.parametrize("n", [10, 100, 5000])
def test_every_id_gets_its_own_slot_in_numpy_and_onnxruntime_when_ids_are_sparse(kind, n):
    ids = _ids(kind, n)
    lookup = build_compact_lookup(ids)
    assert lookup is not None
    assert sorted(lookup.slots(ids).tolist()) == list(range(len(ids)))
    np.testing.assert_array_equal(ids[lookup.order], lookup.ids_in_slot_order)
    check_with_onnxruntime(lookup)
    assert lookup.nbytes <= 10.5 * len(ids) + 8  # int64 raw ids + int32 displacement


def test_unknown_ids_get_minus_one_when_they_are_not_in_the_vocabulary():
    ids = _ids("random", 2000)
    lookup = build_compact_lookup(ids)
    known = set(ids.tolist())
    others = np.array([v for v in [0, -1, 1, INT64_MAX, INT64_MIN, *(ids[:50] + 1).tolist()]
                       if v not in known], np.int64)
    assert (_encode(lookup, others) == -1).all()
    got = _encode(lookup, ids[:300])
    np.testing.assert_array_equal(lookup.ids_in_slot_order[got], ids[:300])


def test_layout_keeps_the_label_encoder_when_the_lookup_cannot_be_built(monkeypatch):
    from export.onnx import id_lookup
    from export.onnx.graphs import RecommenderWeights

    assert build_compact_lookup(np.array([], np.int64)) is None
    monkeypatch.setattr(id_lookup, "build_compact_lookup", lambda ids: None)
    weights = RecommenderWeights(np.ones((2, 3), np.float32), np.ones((3, 3), np.float32), None)
    layout = id_lookup.lay_out(weights, Vocabulary([5, 9]), Vocabulary([1, 2, 3]),
                               compact=(True, False))
    assert layout.lookups == {"users": "label_encoder", "items": "arithmetic"}
    assert layout.ids.compact == (None, None) and layout.weights is not None


USERS = [10**12 + 17 * i for i in range(40)]
ITEMS = [INT64_MAX - 5 * i for i in range(30)] + [-(10**15) - i * 11 for i in range(30)]


@pytest.fixture(scope="module")
def sparse_export(tmp_path_factory):
    return export_tiny_both(tmp_path_factory.mktemp("compact"), "s", USERS, ITEMS)


def _manifest(version_dir) -> dict:
    return json.loads((version_dir / "export_manifest.json").read_text())


def _ops(version_dir) -> set[str]:
    model = onnx.load(str(version_dir / contract.ONNX_FILE), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def test_auto_uses_compact_lookup_for_retrieve_and_label_encoder_for_rerank(sparse_export):
    _, _, dirs = sparse_export
    assert _manifest(dirs["retrieve"])["id_lookup"] == {"users": "compact", "items": "compact"}
    assert "LabelEncoder" not in _ops(dirs["retrieve"])
    assert _manifest(dirs["rerank"])["id_lookup"] == {"users": "label_encoder",
                                                      "items": "label_encoder"}


def test_compact_retrieve_graph_answers_the_trained_model_in_raw_ids(sparse_export):
    model, _, dirs = sparse_export
    user_table, item_table = (w.numpy() for w in model.get_layer("embedding").weights)
    best = np.argsort(-(user_table @ item_table.T), axis=1, kind="stable")
    exclude = np.array([[ITEMS[best[u, 0]], 12345] for u in range(len(USERS))], np.int64)
    session = ort.InferenceSession(str(dirs["retrieve"] / contract.ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    names = list(contract.OUTPUTS["retrieve"])
    feed = {contract.USER_ID: np.array([*USERS, 5], np.int64),
            contract.EXCLUDE_ITEM_IDS: np.vstack([exclude, [[0, 0]]])}
    out = dict(zip(names, session.run(names, feed), strict=True))
    want = [[ITEMS[i] for i in row[1:6]] for row in best]  # best excluded, unknown ignored
    assert out[contract.TOP_ITEM_IDS][:-1].tolist() == want
    assert out[contract.NUM_RESULTS][:, 0].tolist() == [5] * len(USERS) + [0]  # 5: unknown
    assert out[contract.TOP_ITEM_IDS][-1].tolist() == [contract.PAD_INT] * 5


def test_compact_rerank_graph_matches_keras_model_when_asked(sparse_export, tmp_path):
    model, path, _ = sparse_export
    result = export_model(path, tmp_path / "repo", ExportOptions(
        name="c", graph="rerank", k=5, id_lookup="compact"))
    version_dir = result.models[0].version_dir
    assert _manifest(version_dir)["id_lookup"] == {"users": "compact", "items": "compact"}
    rng = np.random.default_rng(3)
    users = np.arange(len(USERS))
    items = rng.integers(0, len(ITEMS), (len(USERS), 9))
    positions, scores = model([users, items])
    session = ort.InferenceSession(str(version_dir / contract.ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    names = list(contract.OUTPUTS["rerank"])
    out = dict(zip(names, session.run(names, {
        contract.USER_ID: np.array([USERS[u] for u in users], np.int64),
        contract.ITEM_IDS: np.array([[ITEMS[i] for i in row] for row in items], np.int64),
    }), strict=True))
    np.testing.assert_array_equal(out[contract.TOP_POSITIONS], np.asarray(positions)[:, :5])
    np.testing.assert_allclose(out[contract.TOP_SCORES], np.asarray(scores)[:, :5],
                               rtol=1e-5, atol=1e-6)


def test_export_refuses_an_unknown_id_lookup_naming_the_allowed_ones(sparse_export, tmp_path):
    _, path, _ = sparse_export
    with pytest.raises(ExportError, match=r"Unknown id lookup 'quick': expected one of "
                                          r"\('auto', 'fast', 'compact'\)"):
        export_model(path, tmp_path / "repo", ExportOptions(name="x", k=5, id_lookup="quick"))


@pytest.mark.parametrize("index", ["int8", "ivf"])
def test_index_retrieve_graphs_use_the_compact_lookup_and_answer_in_raw_ids(
        sparse_export, tmp_path, index):
    model, path, _ = sparse_export
    options = ExportOptions(name="x", graph="retrieve", k=5, index=index,
                            **({"nlist": 4, "nprobe": 4} if index == "ivf" else {}))
    version_dir = export_model(path, tmp_path / "repo", options).models[0].version_dir
    assert _manifest(version_dir)["id_lookup"] == {"users": "compact", "items": "compact"}
    assert "LabelEncoder" not in _ops(version_dir)
    user_table, item_table = (w.numpy() for w in model.get_layer("embedding").weights)
    best = np.argsort(-(user_table @ item_table.T), axis=1, kind="stable")
    session = ort.InferenceSession(str(version_dir / contract.ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {contract.USER_ID: np.array(USERS, np.int64),
            contract.EXCLUDE_ITEM_IDS: np.array([[ITEMS[best[u, 0]]] for u in range(len(USERS))],
                                                np.int64)}
    feed.update({name: np.zeros(len(USERS), np.int64) for name in names[2:]})  # 0: default
    top = session.run([contract.TOP_ITEM_IDS], feed)[0]
    # int8 is exact; IVF probing all 4 lists is exact too
    assert top.tolist() == [[ITEMS[i] for i in row[1:6]] for row in best]


def test_export_refuses_compact_lookup_when_ids_are_strings(tmp_path):
    model = tiny_model(3, 4, 2)
    path = save_artifacts(model, tmp_path / "art", ["a", "b", "c"], [1, 5, 9, 13])
    with pytest.raises(ExportError, match="needs int ids; the user ids are strings"):
        export_model(path, tmp_path / "repo", ExportOptions(name="x", k=2, id_lookup="compact"))
