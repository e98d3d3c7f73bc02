"""``--index ivf``: the export's approximate retrieve model, checked in onnxruntime.

The IVF model must speak the same contract as the exact one (raw ids, exclusions,
unknown ids, padding, ``num_results``), equal it when every list is probed, reach its
recall target, and be refused where it does not apply.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.api import ExportOptions, export_model
from export.cli import main
from export.errors import ExportError
from export.onnx.convert import load_session
from export.parity import served_runner
from export.triton.config import read_model_config
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import tiny_model

USERS = [f"user-{i:03d}" for i in range(40)]
ITEMS = [f"0{i:05d}" for i in range(1500)]  # leading zeros: str ids


def _save(model, folder):
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / contract.MODEL_FILE)
    Vocabulary(USERS).save(folder / contract.USER_VOCAB_FILE)
    Vocabulary(ITEMS).save(folder / contract.ITEM_VOCAB_FILE)
    return folder / contract.MODEL_FILE


@pytest.fixture(scope="module", params=["sqrt_dim", "cosine"])
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ivf_{request.param}")
    model_path = _save(tiny_model(40, 1500, 8, normalization=request.param), tmp / "model")
    repo = tmp / "repo"
    exact = export_model(model_path, repo, ExportOptions(name="exact", graph="retrieve"))
    ivf = export_model(model_path, repo, ExportOptions(name="ivf", graph="retrieve",
                                                       index="ivf", nlist=30))
    return repo, exact.models[0], ivf.models[0]


def _session(model):
    return load_session(model.version_dir / contract.ONNX_FILE)


def _raw(session, users, exclude, nprobe=None):
    feed = {contract.USER_ID: np.array(users, object),
            contract.EXCLUDE_ITEM_IDS: np.array(exclude, object)}
    if nprobe is not None:
        feed[contract.NPROBE] = np.asarray(nprobe, np.int64)
    names = list(contract.OUTPUTS[contract.GRAPH_RETRIEVE])
    return dict(zip(names, session.run(names, feed), strict=True))


def test_ivf_version_records_its_index_and_reaches_its_recall_target(exported):
    repo, _, ivf = exported
    manifest = json.loads((ivf.version_dir / "export_manifest.json").read_text())
    facts = manifest["index"]
    assert facts["index"] == "ivf" and facts["nlist"] == 30 and facts["num_lists"] >= 30
    assert 1 <= facts["nprobe"] <= facts["num_lists"]
    assert facts["sample_recall"] >= 0.95 and facts["target_recall"] == 0.95
    assert ivf.index == facts and manifest["parity"]["passed"]
    config = read_model_config(repo / "ivf")
    assert [i.name for i in config.input] == ["user_id", "exclude_item_ids", "nprobe"]
    nprobe = config.input[2]
    assert not nprobe.optional and nprobe.HasField("reshape")  # onnxruntime backend
    assert config.parameters[contract.PARAM_INDEX].string_value == "ivf"
    perf = json.loads((ivf.version_dir / "perf_analyzer_data.json").read_text())
    assert perf["data"][0][contract.NPROBE] == {"content": [0], "shape": [1]}


def test_every_list_probed_equals_the_exact_model(exported):
    _, exact, ivf = exported
    exact_s, ivf_s = _session(exact), _session(ivf)
    users = USERS[:12] + ["nobody"]
    exclude = [[ITEMS[3], "not-an-item", contract.PAD_STR]] * len(users)
    want = _raw(exact_s, users, exclude)
    got = _raw(ivf_s, users, exclude, np.full(len(users), 10**6))
    np.testing.assert_array_equal(got[contract.TOP_ITEM_IDS], want[contract.TOP_ITEM_IDS])
    np.testing.assert_allclose(got[contract.TOP_SCORES], want[contract.TOP_SCORES],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[contract.NUM_RESULTS], want[contract.NUM_RESULTS])
    assert got[contract.NUM_RESULTS][-1, 0] == 0  # unknown user: an empty row
    assert [_text(v) for v in got[contract.TOP_ITEM_IDS][-1]] == [contract.PAD_STR] * 10
    assert ITEMS[3] not in {_text(v) for v in got[contract.TOP_ITEM_IDS].ravel()}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_default_nprobe_matches_the_reference_of_its_own_index(exported):
    """The dense-id parity run of the export, repeated here from the outside."""
    _, _, ivf = exported
    session = _session(ivf)
    out = _raw(session, USERS[:5], [[contract.PAD_STR]] * 5, np.zeros(5, np.int64))
    again = _raw(session, USERS[:5], [[contract.PAD_STR]] * 5,
                 np.full(5, ivf.index["nprobe"]))
    np.testing.assert_array_equal(out[contract.TOP_ITEM_IDS], again[contract.TOP_ITEM_IDS])
    one = _raw(session, USERS[:5], [[contract.PAD_STR]] * 5, np.ones(5, np.int64))
    assert (one[contract.NUM_RESULTS] <= 10).all()  # fewer items probed, never more slots
    run = served_runner(session, contract.GRAPH_RETRIEVE,
                        (Vocabulary(USERS), Vocabulary(ITEMS)))
    dense = run({contract.USER_ID: np.arange(5), contract.EXCLUDE_ITEM_IDS: np.full((5, 1), -1),
                 contract.NPROBE: np.zeros(5, np.int64)})
    assert (dense[contract.TOP_ITEM_IDS] >= 0).all()


def test_both_graphs_with_ivf_keep_an_exact_rerank(tmp_path):
    model_path = _save(tiny_model(40, 1500, 8), tmp_path / "model")
    result = export_model(model_path, tmp_path / "repo",
                          ExportOptions(graph="both", index="ivf", nprobe=3, backend="python"))
    kinds = {m.graph_kind: m for m in result.models}
    assert kinds["rerank"].index == {"index": "exact"}
    assert kinds["retrieve"].index["nprobe"] == 3
    config = read_model_config(tmp_path / "repo" / "recommender_retrieve")
    assert config.input[2].name == "nprobe" and config.input[2].optional  # model.py fills it
    rerank = read_model_config(tmp_path / "repo" / "recommender_rerank")
    assert contract.PARAM_INDEX not in rerank.parameters


@pytest.mark.parametrize(("options", "message"), [
    (dict(graph="rerank", index="ivf"), "index of the retrieve graph"),
    (dict(graph="rerank", index="int8"), "index of the retrieve graph"),
    (dict(graph="retrieve", nlist=10), "nlist=10 do not apply to index=.exact."),
    (dict(graph="retrieve", index="int8", nprobe=3), "nprobe=3 do not apply to index=.int8."),
    (dict(graph="retrieve", index="ivf", rescore=3), "rescore=3 do not apply"),
    (dict(graph="retrieve", index="int8", rescore=0), "rescore=0: expected a positive int"),
    (dict(graph="retrieve", index="ivf", nprobe=0), "nprobe=0: expected a positive int"),
    (dict(graph="retrieve", index="ivf", target_recall=0.0), "target_recall=0.0"),
    (dict(graph="retrieve", index="hnsw"), "Unknown index 'hnsw'"),
])
def test_bad_ivf_options_are_refused_before_any_work(options, message):
    with pytest.raises(ExportError, match=message):
        ExportOptions(**options).validate()


def test_nlist_larger_than_the_catalogue_is_refused_and_nothing_published(tmp_path):
    model_path = _save(tiny_model(40, 1500, 8), tmp_path / "model")
    with pytest.raises(ExportError, match="nlist=2000: the model has only 1500 items"):
        export_model(model_path, tmp_path / "repo",
                     ExportOptions(graph="retrieve", index="ivf", nlist=2000))
    assert not (tmp_path / "repo" / "recommender").exists()


def test_switching_an_existing_model_between_exact_and_ivf_is_refused(tmp_path):
    model_path = _save(tiny_model(40, 1500, 8), tmp_path / "model")
    repo = tmp_path / "repo"
    export_model(model_path, repo, ExportOptions(graph="retrieve"))
    with pytest.raises(ExportError, match=r"index: 'exact' -> 'ivf'"):
        export_model(model_path, repo, ExportOptions(graph="retrieve", index="ivf"))


def test_cli_exports_ivf_and_prints_its_recall(tmp_path, capsys):
    model_path = _save(tiny_model(40, 1500, 8), tmp_path / "model")
    assert main(["export", "--model", str(model_path), "--repo", str(tmp_path / "repo"),
                 "--graph", "retrieve", "--index", "ivf", "--nlist", "20",
                 "--target-recall", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "ivf: " in out and "default nprobe" in out and "vs exact on sampled users" in out
    manifest = json.loads((tmp_path / "repo" / "recommender" / "1" /
                           "export_manifest.json").read_text())
    assert manifest["index"]["sample_recall"] >= 0.99


def test_int8_model_answers_like_the_exact_model(exported, tmp_path):
    """--index int8: every answer equal to the exact model's, at the exported default."""
    repo, exact, _ = exported
    model_path = next(repo.parent.glob("model/model.keras"))
    int8 = export_model(model_path, repo, ExportOptions(name="int8", graph="retrieve",
                                                        index="int8")).models[0]
    facts = int8.index
    assert facts["index"] == "int8" and facts["sample_agreement"] == 1.0
    assert 2 <= facts["rescore"] <= facts["max_rescore"]
    config = read_model_config(repo / "int8")
    assert [i.name for i in config.input][2] == "rescore"
    assert config.parameters[contract.PARAM_INDEX].string_value == "int8"
    exact_s, int8_s = _session(exact), _session(int8)
    users = USERS + ["nobody"]
    exclude = [[ITEMS[7], "not-an-item"]] * len(users)
    want = _raw(exact_s, users, exclude)
    feed = {contract.USER_ID: np.array(users, object),
            contract.EXCLUDE_ITEM_IDS: np.array(exclude, object),
            contract.RESCORE: np.zeros(len(users), np.int64)}
    names = list(contract.OUTPUTS[contract.GRAPH_RETRIEVE])
    got = dict(zip(names, int8_s.run(names, feed), strict=True))
    np.testing.assert_array_equal(got[contract.TOP_ITEM_IDS], want[contract.TOP_ITEM_IDS])
    np.testing.assert_allclose(got[contract.TOP_SCORES], want[contract.TOP_SCORES],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[contract.NUM_RESULTS], want[contract.NUM_RESULTS])
