"""Export takes models users built from the spec's layers, as they are (issue: any model).

Parity of the served graphs is checked by the export itself against the user's own
model (on the inputs it accepts) and against the layers (other shapes); these tests check
the outcome from outside: the exported ONNX answers like ``model(...)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest

from export.api import ExportOptions, export_model
from export.cli import main
from export.errors import ExportError
from kmr import contract
from kmr.layers import (
    CollaborativeUserItemEmbedding,
    NormalizedDotProductSimilarity,
    TopKRecommendationSelector,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "seed" / "000_8bd999f5ab1a1f1d.txt"


def _spec_model_block() -> str:
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("### In a Complete Recommendation Model")
    block = text[start:].split("```python", 1)[1].split("```", 1)[0]
    assert "keras.Input(shape=(100,), dtype='int32'" in block  # the spec's own model
    return block


def _randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def _session(version_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / contract.ONNX_FILE),
                                providers=["CPUExecutionProvider"])


def _served_rerank(version_dir: Path, users: np.ndarray, items: np.ndarray) -> dict:
    session = _session(version_dir)
    names = list(contract.OUTPUTS[contract.GRAPH_RERANK])
    out = session.run(names, {contract.USER_ID: users.astype(np.int64),
                              contract.ITEM_IDS: items.astype(np.int64)})
    return dict(zip(names, out, strict=True))


@pytest.fixture(scope="module")
def spec_model(tmp_path_factory) -> Path:
    """The spec's complete-model block run unmodified, then trained weights, then saved."""
    scope: dict = {}
    exec(compile(_spec_model_block(), str(SPEC), "exec"), scope)  # noqa: S102 - our spec
    model = _randomize(scope["model"])
    path = tmp_path_factory.mktemp("spec") / "seed_model.keras"
    model.save(path)
    return path


def test_spec_model_exports_both_graphs_and_matches_its_own_topk_when_saved(spec_model,
                                                                            tmp_path):
    code = main(["export", "--model", str(spec_model), "--repo", str(tmp_path / "repo"),
                 "--name", "seed", "--graph", "both"])
    assert code == 0
    model = keras.saving.load_model(spec_model)
    rng = np.random.default_rng(3)
    users = rng.integers(0, 1000, 4)
    items = rng.integers(0, 5000, (4, 100))
    positions, scores = model([users.reshape(-1, 1).astype("int32"), items.astype("int32")])
    served = _served_rerank(tmp_path / "repo" / "seed_rerank" / "1", users, items)
    np.testing.assert_array_equal(served[contract.TOP_POSITIONS], np.asarray(positions))
    np.testing.assert_allclose(served[contract.TOP_SCORES], np.asarray(scores), rtol=1e-5,
                               atol=1e-6)
    # N != 100: the user's fixed shape does not fix the served graph's.
    wide = rng.integers(0, 5000, (2, 7))
    served = _served_rerank(tmp_path / "repo" / "seed_rerank" / "1", users[:2], wide)
    assert served[contract.TOP_ITEM_IDS].shape == (2, 10)
    assert served[contract.NUM_RESULTS].tolist() == [[7], [7]]
    assert (served[contract.TOP_ITEM_IDS][:, 7:] == contract.PAD_INT).all()  # raw-id graph
    manifest = json.loads((tmp_path / "repo" / "seed_retrieve" / "1" /
                           "export_manifest.json").read_text())
    assert manifest["k"] == 10 and manifest["vocabularies"]["item_vocabulary.json"] == "identity"


def _custom_model(*, with_selector: bool, extra_output: bool) -> keras.Model:
    users = keras.Input(shape=(1,), dtype="int32", name="who")
    items = keras.Input(shape=(None,), dtype="int32", name="what")
    emb = CollaborativeUserItemEmbedding(12, 40, 6, name="tables")
    user_vec, item_vecs = emb([users, items])
    scores = NormalizedDotProductSimilarity("cosine", name="cos")(
        [keras.ops.expand_dims(user_vec, axis=1), item_vecs])
    outputs = [scores]
    if with_selector:
        outputs = list(TopKRecommendationSelector(k=4, name="pick")(scores))
    if extra_output:
        outputs.append(user_vec)
    return _randomize(keras.Model([users, items], outputs, name="custom"), seed=1)


@pytest.mark.parametrize(("with_selector", "extra_output"), [(True, True), (False, False)])
def test_custom_model_exports_in_memory_and_matches_layers_when_names_and_dtypes_differ(
        tmp_path, with_selector, extra_output):
    model = _custom_model(with_selector=with_selector, extra_output=extra_output)
    k = 4 if with_selector else 3
    result = export_model(model, tmp_path / "repo", ExportOptions(name="c", graph="both", k=k))
    assert [m.name for m in result.models] == ["c_rerank", "c_retrieve"]
    assert all(m.parity["ids_equal"] for m in result.models)
    users, items = np.array([0, 5, 11]), np.random.default_rng(0).integers(0, 40, (3, 9))
    served = _served_rerank(result.models[0].version_dir, users, items)
    scores = model([users.reshape(-1, 1).astype("int32"), items.astype("int32")])
    scores = np.asarray(scores[1] if with_selector else scores)
    if not with_selector:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
    np.testing.assert_allclose(served[contract.TOP_SCORES], scores, rtol=1e-5, atol=1e-6)


def _two_tables() -> keras.Model:
    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(None,), dtype="int64", name="item_ids")
    u1, i1 = CollaborativeUserItemEmbedding(5, 9, 4, name="a")([users, items])
    u2, _ = CollaborativeUserItemEmbedding(5, 9, 4, name="b")([users, items])
    scores = NormalizedDotProductSimilarity()([keras.ops.expand_dims(u1 + u2, 1), i1])
    return keras.Model([users, items], scores)


def _lambda_model() -> keras.Model:
    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(None,), dtype="int64", name="item_ids")
    u, i = CollaborativeUserItemEmbedding(5, 9, 4)([users, items])
    u = keras.layers.Lambda(lambda x: x * 2.0)(u)
    return keras.Model([users, items], NormalizedDotProductSimilarity()(
        [keras.ops.expand_dims(u, 1), i]))


def _dense_model() -> keras.Model:
    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(None,), dtype="int64", name="item_ids")
    u, i = CollaborativeUserItemEmbedding(5, 9, 4)([users, items])
    u = keras.layers.Dense(4)(u)
    return keras.Model([users, items], NormalizedDotProductSimilarity()(
        [keras.ops.expand_dims(u, 1), i]))


def _half_model() -> keras.Model:
    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(None,), dtype="int64", name="item_ids")
    u, i = CollaborativeUserItemEmbedding(5, 9, 4, dtype="float16")([users, items])
    return keras.Model([users, items], NormalizedDotProductSimilarity(dtype="float16")(
        [keras.ops.expand_dims(u, 1), i]))


@pytest.mark.parametrize(("build", "message"), [
    (_two_tables, "2 CollaborativeUserItemEmbedding layers"),
    (_lambda_model, "Lambda"),
    (_dense_model, "Dense"),
    (_half_model, "dtype policy 'float16'"),
])
def test_export_cli_refuses_with_clear_error_when_model_cannot_be_served(tmp_path, build,
                                                                        message):
    path = tmp_path / "user_model.keras"
    build().save(path)
    done = subprocess.run([sys.executable, "-m", "export", "export", "--model", str(path),
                           "--repo", str(tmp_path / "repo")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_export_model_refuses_in_memory_model_when_similarity_is_not_fed_by_the_embedding(
        tmp_path):
    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(None,), dtype="int64", name="item_ids")
    u, i = CollaborativeUserItemEmbedding(5, 9, 4)([users, items])
    scores = NormalizedDotProductSimilarity()([keras.ops.expand_dims(u, 1),
                                              keras.ops.expand_dims(u, 1)])
    with pytest.raises(ExportError, match="fed by"):
        export_model(keras.Model([users, items], scores), tmp_path / "repo")
