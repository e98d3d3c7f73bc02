"""Reading a trained recommender from its .keras archive without loading the model."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from export.api import ExportOptions, export_model, open_trained_archive
from export.archive import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ArchiveError,
    open_archive,
    parse_config,
    sample_model,
)
from export.errors import ExportError
from export.onnx import graphs as serving_graphs
from export.onnx.graphs import RecommenderWeights, serving_graph
from export.onnx.weights import bake_tables
from export.parity import compare, retrieve_reference
from kmr import contract
from tests.support.compare import assert_same_results
from tests.support.export_helpers import save_artifacts, tiny_model

NU, NI, D = 37, 301, 8


@pytest.fixture(scope="module", params=["sqrt_dim", "cosine"])
def saved(request, tmp_path_factory):
    """(model, model.keras path) of a trained-looking (random-weight) recommender."""
    model = tiny_model(NU, NI, D, normalization=request.param)
    return model, save_artifacts(model, tmp_path_factory.mktemp(f"art_{request.param}"))


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], *,
             compression: int = zipfile.ZIP_STORED) -> Path:
    """Copies the archive ``src`` to ``dst`` with some members replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    for vocab in (contract.USER_VOCAB_FILE, contract.ITEM_VOCAB_FILE):
        shutil.copyfile(src.parent / vocab, dst.parent / vocab)
    return dst


def _config(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(CONFIG_FILE))


def _layer(config: dict, class_name: str) -> dict:
    return next(la for la in config["config"]["layers"] if la["class_name"] == class_name)


def test_archive_tables_equal_model_weights_when_read_in_any_way(saved):
    model, path = saved
    users, items = (np.asarray(w) for w in model.get_weights())
    with open_archive(path) as archive:
        assert (archive.num_users, archive.num_items, archive.embedding_dim) == (NU, NI, D)
        assert archive.users.direct and archive.items.direct  # Keras stores h5 uncompressed
        np.testing.assert_array_equal(np.asarray(archive.users), users)
        np.testing.assert_array_equal(archive.items[5:77], items[5:77])
        np.testing.assert_array_equal(archive.items[NI - 3 :], items[NI - 3 :])
        ids = np.array([[300, 3, 3, 0], [7, 8, 9, 1]])
        np.testing.assert_array_equal(archive.items[ids], items[ids])
        assert archive.items[ids[:, :0]].shape == (2, 0, D)
        chunks = list(archive.items.chunks(64))
        assert [s for s, _ in chunks] == [0, 64, 128, 192, 256]
        np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), items)
        with pytest.raises(IndexError, match=f"Row id {NI} is out of range"):
            archive.items[np.array([NI])]


def test_archive_reads_through_h5py_when_member_compressed(saved, tmp_path):
    model, path = saved
    copy = _rewrite(path, tmp_path / "model.keras", {}, compression=zipfile.ZIP_DEFLATED)
    with open_archive(copy) as archive:
        np.testing.assert_array_equal(np.asarray(archive.items), model.get_weights()[1])
    # h5py fallback (chunked or converted datasets): same rows as the pread path.
    with open_archive(path) as archive:
        archive.items._offset = None
        assert not archive.items.direct
        np.testing.assert_array_equal(archive.items[3:250], model.get_weights()[1][3:250])


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_chunked_tables_equal_in_memory_layout_when_streamed_from_archive(saved, tmp_path,
                                                                           monkeypatch, kind):
    model, path = saved
    monkeypatch.setattr(serving_graphs, "_CHUNK_ROWS", 64)  # several chunks + a tail
    in_memory = serving_graph(model, kind, 5)
    with open_archive(path) as archive:
        weights = RecommenderWeights(archive.users, archive.items, archive.similarity_layer())
        streamed = serving_graph(weights, kind, 5)
        for want, got in zip(in_memory.tables, streamed.tables, strict=True):
            assert (want.name, want.shape) == (got.name, got.shape)
            np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
        import onnx

        proto = onnx.ModelProto()
        for table in streamed.tables:
            proto.graph.input.add(name=table.name)
        (data,) = bake_tables(proto, streamed.tables, tmp_path, external_threshold_bytes=0)
    raw = data.read_bytes()
    for tensor, want in zip(proto.graph.initializer, in_memory.tables, strict=True):
        location = {e.key: e.value for e in tensor.external_data}
        offset, length = int(location["offset"]), int(location["length"])
        assert offset % 4096 == 0 and length == want.nbytes
        got = np.frombuffer(raw[offset : offset + length], "<f4").reshape(want.shape)
        np.testing.assert_array_equal(got, want.to_numpy())


def test_retrieve_reference_equals_full_sort_when_streamed_in_chunks(saved, monkeypatch):
    import export.parity as parity

    model, path = saved
    users = np.array([0, 5, NU - 1, -1, NU])
    exclude = np.array([[1, -1], [2, 300], [-1, -1], [4, 4], [NI, 2**62]])
    full = retrieve_reference(model, users, exclude, 10)  # one chunk, in memory
    monkeypatch.setattr(parity, "_CHUNK_ITEMS", 7)
    with open_archive(path) as archive:
        weights = RecommenderWeights(archive.users, archive.items, archive.similarity_layer())
        streamed = retrieve_reference(weights, users, exclude, 10)
    assert_same_results(streamed, full)  # chunked sums may differ in the last bit
    # Ties: equal scores everywhere must give the lowest item ids, across chunk edges.
    flat = RecommenderWeights(np.ones((3, 2), "f4"), np.ones((20, 2), "f4"),
                              model.get_layer("similarity"))
    ref = retrieve_reference(flat, np.array([0]), np.array([[0, 8]]), 10)
    assert ref[contract.TOP_ITEM_IDS].tolist() == [[1, 2, 3, 4, 5, 6, 7, 9, 10, 11]]
    assert compare(ref, ref)[3]


def test_sample_model_matches_full_model_when_ids_sampled(saved):
    model, path = saved
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, NU, 6), rng.integers(0, NI, (6, 12))
    with open_archive(path) as archive:
        small, local_users, local_items = sample_model(archive, users, items)
    assert small.get_layer("embedding").num_items <= 72
    positions, scores = small([local_users, local_items])
    want_positions, want_scores = model([users, items])
    np.testing.assert_array_equal(np.asarray(positions), np.asarray(want_positions))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want_scores), atol=1e-6)


def _lambda_config(config: dict) -> dict:
    bad = json.loads(json.dumps(config))
    expand = _layer(bad, "ExpandDims")
    expand.update(class_name="Lambda", module="keras.layers", registered_name=None)
    expand["config"] = {"name": "expand_dims", "function": {
        "class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA", "defaults": None}}}
    return bad


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_lambda_config, "'Lambda'"),
        (lambda c: {**c, "class_name": "Sequential"}, "Functional"),
        (lambda c: json.loads(json.dumps(c).replace('"TopKRecommendationSelector"',
                                                    '"EvilSelector"')), "'EvilSelector'"),
        (lambda c: json.loads(json.dumps(c).replace('"kmr>NormalizedDotProductSimilarity"',
                                                    '"evil>NormalizedDotProductSimilarity"')),
         "not registered"),
        # Keras resolves registered_name before class_name, and imports `module`.
        (lambda c: json.loads(json.dumps(c).replace(
            '"registered_name": "ExpandDims"',
            '"registered_name": "kmr>TopKRecommendationSelector"')), "not registered"),
        (lambda c: json.loads(json.dumps(c).replace('"module": "keras.layers"',
                                                    '"module": "os"')), "module='os'"),
    ],
)
def test_export_refuses_archive_when_config_tampered(saved, tmp_path, tamper, message):
    _, path = saved
    bad = _rewrite(path, tmp_path / "model.keras",
                   {CONFIG_FILE: json.dumps(tamper(_config(path))).encode()})
    with pytest.raises(ExportError, match="Cannot load") as error:
        export_model(bad, tmp_path / "repo", ExportOptions(graph="both", k=3))
    assert message in str(error.value)
    assert not any((tmp_path / "repo").iterdir())
    # Keras's own safe mode refuses the Lambda archive as well (the old check).
    if tamper is _lambda_config:
        with pytest.raises(ValueError, match="safe_mode|Lambda|lambda"):
            keras.saving.load_model(bad, safe_mode=True)


def test_parse_config_refuses_when_structure_differs(saved):
    _, path = saved
    config = _config(path)
    extra = json.loads(json.dumps(config))
    twin = json.loads(json.dumps(_layer(config, "CollaborativeUserItemEmbedding")))
    twin["name"] = "second_embedding"
    extra["config"]["layers"].append(twin)
    with pytest.raises(ArchiveError, match="2 CollaborativeUserItemEmbedding layers"):
        parse_config(json.dumps(extra))
    sizes = json.loads(json.dumps(config))
    _layer(sizes, "CollaborativeUserItemEmbedding")["config"]["num_items"] = -4
    with pytest.raises(ArchiveError, match="sizes"):
        parse_config(json.dumps(sizes))
    with pytest.raises(ArchiveError, match="JSON"):
        parse_config(b"{not json")


def test_export_refuses_archive_when_weights_do_not_match_config(saved, tmp_path):
    _, path = saved
    config = _config(path)
    _layer(config, "CollaborativeUserItemEmbedding")["config"]["num_items"] = NI + 1
    bad = _rewrite(path, tmp_path / "model.keras", {CONFIG_FILE: json.dumps(config).encode()})
    with pytest.raises(ExportError, match=r"item table must have shape \(302, 8\)"):
        open_trained_archive(bad)

    h5_path = tmp_path / WEIGHTS_FILE
    with zipfile.ZipFile(path) as zf:
        h5_path.write_bytes(zf.read(WEIGHTS_FILE))
    with h5py.File(h5_path, "a") as h5:
        h5["layers/top_k_recommendation_selector/vars"].create_dataset("0", data=np.ones(3))
    extra = _rewrite(path, tmp_path / "extra.keras", {WEIGHTS_FILE: h5_path.read_bytes()})
    with pytest.raises(ExportError, match="weights only for the embedding"):
        open_trained_archive(extra)

    with zipfile.ZipFile(path) as zf:
        raw = zf.read(WEIGHTS_FILE)
    cut = _rewrite(path, tmp_path / "cut.keras", {WEIGHTS_FILE: raw[: len(raw) // 2]})
    with pytest.raises(ExportError, match="Cannot load"):
        open_trained_archive(cut)
    missing = tmp_path / "missing.keras"
    with zipfile.ZipFile(missing, "w") as zf:
        zf.writestr(CONFIG_FILE, json.dumps(_config(path)))
    with pytest.raises(ExportError, match="no model.weights.h5"):
        open_trained_archive(missing)


def test_onnx_outputs_identical_when_prepacking_disabled(saved, tmp_path):
    import onnx

    from export.onnx.convert import convert_graph, load_session
    from tests.support.export_helpers import run_session

    model, _ = saved
    kind = contract.GRAPH_RETRIEVE
    graph = serving_graph(model, kind, 10)
    converted = convert_graph(graph, tmp_path, external_threshold_bytes=0)
    proto = onnx.load(str(converted.path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in proto.graph.initializer if t.name.startswith("kmr_")}
    assert dims == {t.name: list(t.shape) for t in graph.tables}  # real shapes, not [?, D]
    rng = np.random.default_rng(5)
    feed = {contract.USER_ID: rng.integers(-2, NU + 2, 64),
            contract.EXCLUDE_ITEM_IDS: rng.integers(-1, NI, (64, 3))}
    packed = run_session(load_session(converted.path), kind, feed)
    plain = run_session(load_session(converted.path, prepack=False), kind, feed)
    assert_same_results(plain, packed)
