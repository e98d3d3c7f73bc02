"""Repository layout, versioning and atomic publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.api import ExportOptions, export_model
from export.errors import ExportError
from export.triton.config import read_model_config
from export.triton.repository import (
    STAGING_PREFIX,
    RepositoryError,
    StagedVersion,
    check_model_name,
    clean_stale_staging,
    existing_versions,
    model_paths,
    next_version,
    staging_area,
)
from kmr import contract
from tests.support.export_helpers import save_artifacts, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return save_artifacts(tiny_model(20, 50), tmp_path_factory.mktemp("artifacts"))


def _visible(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(repo).parts))


def test_model_paths_follow_triton_layout_when_called():
    paths = model_paths("repo", "mf", 4)
    assert paths.version_dir == Path("repo/mf/4")
    assert paths.config == Path("repo/mf/config.pbtxt")


def test_next_version_counts_up_when_versions_exist(tmp_path):
    for name in ("1", "3", "07", "x", ".kmr-staging-1-a"):
        (tmp_path / "mf" / name).mkdir(parents=True)
    assert existing_versions(tmp_path, "mf") == [1, 3]
    assert next_version(tmp_path, "mf") == 4
    assert next_version(tmp_path, "other") == 1


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "12"])
def test_check_model_name_raises_when_name_unusable(name):
    with pytest.raises(RepositoryError):
        check_model_name(name)


def test_staged_version_is_invisible_until_published_when_model_new(tmp_path):
    staged = StagedVersion(model_paths(tmp_path, "mf", 1), replace=False)
    (staged.dir / "model.onnx").write_bytes(b"x")
    assert _visible(tmp_path) == []
    staged.config_text = 'name: "mf"\n'
    staged.publish()
    assert _visible(tmp_path) == ["mf", "mf/1", "mf/1/model.onnx", "mf/config.pbtxt"]


def test_staged_version_replaces_config_when_model_exists(tmp_path):
    for version, text in ((1, "one"), (2, "two")):
        staged = StagedVersion(model_paths(tmp_path, "mf", version), replace=False)
        (staged.dir / "f").write_text(text)
        staged.config_text = text
        staged.publish()
    assert (tmp_path / "mf/config.pbtxt").read_text() == "two"
    assert (tmp_path / "mf/1/f").read_text() == "one"
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))


def test_staged_version_leaves_nothing_when_discarded(tmp_path):
    (tmp_path / "mf/1").mkdir(parents=True)
    staged = StagedVersion(model_paths(tmp_path, "mf", 2), replace=False)
    (staged.dir / "f").write_text("x")
    staged.discard()
    assert _visible(tmp_path) == ["mf", "mf/1"] and not list(tmp_path.rglob(".*"))


def test_clean_stale_staging_removes_folders_when_owner_dead(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / "mf" / f"{STAGING_PREFIX}{dead}-abc"
    stale.mkdir(parents=True)
    live = tmp_path / f"{STAGING_PREFIX}{os.getppid()}-def"
    live.mkdir()
    assert clean_stale_staging(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_export_model_publishes_version_files_when_ok(tmp_path, artifacts):
    result = export_model(artifacts, tmp_path, ExportOptions(name="mf", graph="rerank", k=5))
    (model,) = result.models
    assert (model.name, model.version) == ("mf", 1)
    files = sorted(p.name for p in model.version_dir.iterdir())
    assert files == sorted([contract.ONNX_FILE, contract.USER_VOCAB_FILE,
                            contract.ITEM_VOCAB_FILE, "export_manifest.json",
                            "perf_analyzer_data.json"])
    manifest = json.loads((model.version_dir / "export_manifest.json").read_text())
    assert manifest["graph_kind"] == "rerank" and manifest["k"] == 5
    assert manifest["parity"]["ids_equal"] is True
    assert len(manifest["onnx_sha256"]) == 64
    assert export_model(artifacts, tmp_path, ExportOptions(name="mf", k=5)).models[0].version == 2


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_config_matches_onnx_io_when_exported(tmp_path, artifacts, backend):
    result = export_model(
        artifacts,
        tmp_path,
        ExportOptions(name="mf", graph="both", k=4, backend=backend, max_batch_size=16),
    )
    assert [m.name for m in result.models] == ["mf_rerank", "mf_retrieve"]
    dtypes = {onnx.TensorProto.INT64: 8, onnx.TensorProto.FLOAT: 1}  # -> TYPE_INT64/TYPE_FP32
    for m in result.models:
        config = read_model_config(m.version_dir.parent)
        assert config.name == m.name and config.max_batch_size == 16
        proto = onnx.load(str(m.version_dir / contract.ONNX_FILE), load_external_data=False)
        assert [i.name for i in config.input] == [i.name for i in proto.graph.input]
        assert [o.name for o in config.output] == [o.name for o in proto.graph.output]
        for spec, value in zip(
            [*config.input, *config.output], [*proto.graph.input, *proto.graph.output], strict=True
        ):
            onnx_type = value.type.tensor_type.elem_type
            assert spec.data_type == {8: 9, 1: 11}[dtypes[onnx_type]]  # INT64=9, FP32=11
        for o in config.output:
            assert list(o.dims) == ([1] if o.name == contract.NUM_RESULTS else [4])
        assert config.parameters[contract.PARAM_GRAPH_KIND].string_value == m.graph_kind
        assert (m.version_dir / "model.py").exists() == (backend == "python")


def test_export_model_refuses_overwrite_when_version_exists(tmp_path, artifacts):
    export_model(artifacts, tmp_path, ExportOptions(name="mf", k=3))
    before = (tmp_path / "mf/1/model.onnx").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_model(artifacts, tmp_path, ExportOptions(name="mf", k=3, version=1))
    assert (tmp_path / "mf/1/model.onnx").read_bytes() == before
    export_model(artifacts, tmp_path, ExportOptions(name="mf", k=4, version=1, force=True))
    manifest = json.loads((tmp_path / "mf/1/export_manifest.json").read_text())
    assert manifest["k"] == 4 and existing_versions(tmp_path, "mf") == [1]
    assert not list(tmp_path.rglob(".*"))


def test_export_model_leaves_repository_untouched_when_parity_fails(
    tmp_path, artifacts, monkeypatch
):
    export_model(artifacts, tmp_path, ExportOptions(name="mf", k=3))
    snapshot = _visible(tmp_path)
    import export.parity as parity

    real = parity.rerank_reference

    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        out[contract.TOP_SCORES] = out[contract.TOP_SCORES] + 1.0
        return out

    monkeypatch.setattr(parity, "rerank_reference", broken)
    with pytest.raises(ExportError, match="Parity check failed"):
        export_model(artifacts, tmp_path, ExportOptions(name="mf", graph="both", k=3))
    assert _visible(tmp_path) == snapshot and not list(tmp_path.rglob(".*"))


def _staged_onnx(repo: Path) -> list[Path]:
    try:
        return list(staging_area(repo).glob(f"{STAGING_PREFIX}*/{contract.ONNX_FILE}"))
    except FileNotFoundError:  # the export removed a folder (e.g. its probe) mid-scan
        return []


def test_export_cli_leaves_no_version_when_killed_mid_export(tmp_path):
    # Big enough that staging lives for a few seconds (write, check, parity).
    art = tmp_path / "art"
    save_artifacts(tiny_model(200_000, 400_000, 32), art)
    repo = tmp_path / "repo"
    cmd = [
        sys.executable,
        "-m",
        "export",
        "export",
        "--model",
        str(art / "model.keras"),
        "--repo",
        str(repo),
        "--name",
        "mf",
        "--k",
        "5",
        "--graph",
        "both",
        "--external-data-threshold-mb",
        "0",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (repo / "mf_rerank").rglob("*")}

    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not _staged_onnx(repo):
        assert proc.poll() is None and time.monotonic() < deadline, "export never staged"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(staging_area(repo).glob(f"{STAGING_PREFIX}*"))  # the kill hit mid-export
    assert not list(repo.rglob(f"{STAGING_PREFIX}*"))  # staging never inside the repository
    assert existing_versions(repo, "mf_rerank") == [1] == existing_versions(repo, "mf_retrieve")
    assert {
        p: p.stat().st_mtime_ns
        for p in (repo / "mf_rerank").rglob("*")
        if STAGING_PREFIX not in str(p)
    } == before

    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    assert existing_versions(repo, "mf_rerank") == [1, 2] == existing_versions(repo, "mf_retrieve")
    assert not list(repo.rglob(f"{STAGING_PREFIX}*"))
    assert not list(staging_area(repo).glob(f"{STAGING_PREFIX}*"))  # the stale one is gone


def test_existing_versions_ignores_folders_when_not_ascii_integers(tmp_path):
    for name in ("2", "²", "1a", "v3"):
        (tmp_path / "mf" / name).mkdir(parents=True)
    assert existing_versions(tmp_path, "mf") == [2]


def test_staged_version_keeps_newest_config_when_older_version_published(tmp_path):
    for version, text in ((2, "two"), (1, "one")):
        staged = StagedVersion(model_paths(tmp_path, "mf", version), replace=False)
        staged.config_text = text
        staged.publish()
    assert (tmp_path / "mf/config.pbtxt").read_text() == "two"  # Triton serves version 2
    assert existing_versions(tmp_path, "mf") == [1, 2]


def test_staged_version_restores_previous_version_when_rename_fails(tmp_path, monkeypatch):
    first = StagedVersion(model_paths(tmp_path, "mf", 1), replace=False)
    (first.dir / "f").write_text("old")
    first.config_text = "old"
    first.publish()
    again = StagedVersion(model_paths(tmp_path, "mf", 1), replace=True)
    (again.dir / "f").write_text("new")
    again.config_text = "new"
    real_rename = os.rename

    def failing(src, dst):
        if Path(src) == again.dir:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="No space"):
        again.publish()
    again.discard()
    assert (tmp_path / "mf/1/f").read_text() == "old"
    assert (tmp_path / "mf/config.pbtxt").read_text() == "old"
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))


def test_export_model_fails_before_converting_when_serving_option_bad(
    tmp_path, artifacts, monkeypatch
):
    import export.onnx.convert as onnx_convert

    def never(*args, **kwargs):
        raise AssertionError("converted although the config cannot be built")

    monkeypatch.setattr(onnx_convert, "convert_graph", never)
    with pytest.raises(ExportError, match="instance_count=0"):
        export_model(artifacts, tmp_path, ExportOptions(name="mf", k=3, instances=0))
    assert not any(tmp_path.iterdir())


def test_keras_check_accepts_tie_swap_when_candidate_repeated():
    from export.api import _keras_rerank_diff

    # Candidate 8 at positions 0 and 2: Keras ties to position 0; onnxruntime may round
    # the two copies' scores apart by an ulp and put position 2 first.
    items = np.array([[8, 3, 8]])
    positions, scores = np.array([[0, 2, 1]]), np.array([[0.5, 0.5, 0.1]], np.float32)

    def run(feed):
        return {
            contract.TOP_ITEM_IDS: np.array([[8, 8, 3]]),
            contract.TOP_POSITIONS: np.array([[2, 0, 1]]),
            contract.TOP_SCORES: np.array([[0.50000006, 0.5, 0.1]], np.float32),
        }

    cases = [(np.array([0]), items, positions, scores)]
    assert _keras_rerank_diff(cases, run, 3)[1:] == (False, True)
    wrong = {**run(None), contract.TOP_POSITIONS: np.array([[1, 0, 2]])}
    assert _keras_rerank_diff(cases, lambda feed: wrong, 3)[2] is False


def test_export_model_publishes_when_k_equals_num_items(tmp_path):
    art = save_artifacts(tiny_model(5, 9, 4), tmp_path / "art")  # repeats in the Keras check
    result = export_model(art, tmp_path / "repo", ExportOptions(name="mf", graph="both", k=9))
    assert [m.version for m in result.models] == [1, 1]


def test_staged_version_publishes_as_version_when_model_created_meanwhile(tmp_path):
    mine = StagedVersion(model_paths(tmp_path, "mf", 2), replace=False)
    assert mine.new_model
    (mine.dir / "f").write_text("mine")
    mine.config_text = "two"
    other = StagedVersion(model_paths(tmp_path, "mf", 1), replace=False)  # a concurrent export
    other.config_text = "one"
    other.publish()
    mine.publish()
    assert existing_versions(tmp_path, "mf") == [1, 2]
    assert (tmp_path / "mf/2/f").read_text() == "mine"
    assert (tmp_path / "mf/config.pbtxt").read_text() == "two"
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))
