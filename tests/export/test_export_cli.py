"""The ``kmr-export export`` command: output on success, clear errors and no writes on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.cli import main
from tests.support.export_helpers import save_artifacts, tiny_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return save_artifacts(tiny_model(20, 50), tmp_path_factory.mktemp("artifacts"))


def _export(model: Path | str, repo: Path, *extra: str) -> int:
    return main(["export", "--model", str(model), "--repo", str(repo), "--name", "mf", *extra])


def test_export_cli_prints_stages_and_parity_when_ok(tmp_path, artifacts, capsys):
    assert _export(artifacts, tmp_path / "repo", "--graph", "both", "--k", "5") == 0
    out = capsys.readouterr().out
    for stage in ("load", "convert", "check", "verify parity", "publish"):
        assert f"{stage}]" in out
    assert "wrote mf_rerank version 1" in out and "wrote mf_retrieve version 1" in out
    assert "top-k ids equal: yes" in out
    assert (tmp_path / "repo/mf_retrieve/1/model.onnx").is_file()


def test_export_cli_uses_external_data_when_threshold_zero(tmp_path, artifacts, capsys):
    assert _export(artifacts, tmp_path, "--external-data-threshold-mb", "0", "--k", "3") == 0
    assert (tmp_path / "mf/1/model.onnx.data").is_file()
    assert "external data" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "0"], "Invalid k=0"),
        (["--k", "-3"], "Invalid k=-3"),
        (["--k", "51"], "only 50 items"),
        (["--version", "0"], "Invalid version"),
        (["--external-data-threshold-mb", "5000"], "threshold"),
    ],
)
def test_export_cli_fails_without_writing_when_arguments_bad(tmp_path, artifacts, capsys,
                                                             extra, message):
    repo = tmp_path / "repo"
    assert _export(artifacts, repo, *extra) == 1
    assert message in capsys.readouterr().err
    assert not repo.exists() or not any(repo.iterdir())


def test_export_cli_exits_2_when_graph_unknown(tmp_path, artifacts, capsys):
    with pytest.raises(SystemExit) as exc:
        _export(artifacts, tmp_path / "repo", "--graph", "ranker")
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_export_cli_fails_without_writing_when_model_missing(tmp_path, capsys):
    assert _export(tmp_path / "nope.keras", tmp_path / "repo") == 1
    assert "does not exist" in capsys.readouterr().err
    assert not any((tmp_path / "repo").iterdir())


def test_export_cli_fails_without_writing_when_model_corrupt(tmp_path, capsys):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a zip file")
    assert _export(bad, tmp_path / "repo") == 1
    assert "Cannot load" in capsys.readouterr().err
    assert not any((tmp_path / "repo").iterdir())


def test_export_cli_publishes_identity_vocabularies_when_none_are_saved(tmp_path, artifacts):
    import json

    from kmr.vocabulary import Vocabulary

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.keras").write_bytes(artifacts.read_bytes())
    assert _export(lone / "model.keras", tmp_path / "repo", "--k", "3") == 0
    version = tmp_path / "repo" / "mf" / "1"
    assert Vocabulary.load(version / "item_vocabulary.json").ids == tuple(range(50))
    manifest = json.loads((version / "export_manifest.json").read_text())
    assert manifest["vocabularies"] == {"user_vocabulary.json": "identity",
                                        "item_vocabulary.json": "identity"}


def test_export_cli_reads_vocabulary_files_when_given_as_text(tmp_path, artifacts):
    from kmr.vocabulary import Vocabulary

    items = tmp_path / "items.txt"
    items.write_text("".join(f"{i:04d}\n" for i in range(50)))  # leading zeros kept
    users = tmp_path / "users.csv"
    users.write_text("user\n" + "".join(f"u{i}\n" for i in range(20)))
    assert _export(artifacts, tmp_path / "repo", "--k", "3", "--item-vocabulary", str(items),
                   "--user-vocabulary", str(users)) == 0
    version = tmp_path / "repo" / "mf" / "1"
    assert Vocabulary.load(version / "item_vocabulary.json").ids[:2] == ("0000", "0001")
    assert Vocabulary.load(version / "user_vocabulary.json").ids[-1] == "u19"


def test_export_cli_fails_naming_sizes_when_vocabulary_file_is_short(tmp_path, artifacts,
                                                                     capsys):
    items = tmp_path / "items.txt"
    items.write_text("a\nb\n")
    assert _export(artifacts, tmp_path / "repo", "--k", "3", "--item-vocabulary",
                   str(items)) == 1
    assert "has 2 ids but the model has 50 rows" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "mf").exists()


def test_export_cli_fails_when_repository_not_writable(tmp_path, artifacts, capsys):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        code = _export(artifacts, readonly / "repo", "--k", "3")
        err = capsys.readouterr().err
    finally:
        readonly.chmod(0o700)
    if code == 0:  # running as root: permissions do not apply; use a file as the parent
        (tmp_path / "file").write_text("x")
        code = _export(artifacts, tmp_path / "file" / "repo", "--k", "3")
        err = capsys.readouterr().err
    assert code == 1 and "not writable" in err


def test_serve_cli_fails_with_setup_hint_when_triton_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KMR_TRITON_HOME", str(tmp_path / "no-triton"))
    (tmp_path / "repo").mkdir()
    assert main(["serve", "--repo", str(tmp_path / "repo")]) == 1
    assert "scripts/setup_triton.sh" in capsys.readouterr().err


def test_triton_home_defaults_to_user_cache_when_no_override(tmp_path, monkeypatch):
    from export.triton.local_server import TritonNotInstalledError, find_tritonserver

    monkeypatch.delenv("KMR_TRITON_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(TritonNotInstalledError) as info:
        find_tritonserver()
    assert str(tmp_path / "cache" / "kmr-recommender" / "triton") in str(info.value)
    root = Path(__file__).resolve().parents[2]
    assert str(root) not in str(info.value)  # never inside the source tree


@pytest.mark.parametrize("url", ["gs://b/p", "https://host/repo", "file:///tmp/x"])
def test_export_cli_refuses_url_when_repository_is_not_a_local_folder(tmp_path, artifacts,
                                                                      capsys, monkeypatch,
                                                                      url):
    monkeypatch.chdir(tmp_path)
    assert _export(artifacts, url, "--k", "3") == 1
    err = capsys.readouterr().err
    assert "not supported" in err or "not a supported repository" in err, err
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" appears
