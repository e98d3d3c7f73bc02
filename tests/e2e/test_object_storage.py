"""Publishing to object storage, end to end: a real SeaweedFS S3 store and a real tritonserver.

One SeaweedFS (tests/support/object_store.py) serves the module; the ``AWS_*`` variables
point boto3 and tritonserver at it. The served test starts tritonserver in explicit mode on
an empty local folder plus ``--model-repository=s3://127.0.0.1:PORT/bucket/prefix`` and
loads versions through `export.storage.pinned_load_config` only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.errors import ExportError
from export.storage import (
    MARKER_FILE,
    download_version,
    find_complete_versions,
    pin_serving_version,
    pinned_load_config,
    publish_version,
    read_marker,
    remote_versions,
    serving_version,
)
from export.storage.checksums import file_digests
from export.storage.serving import with_pin
from export.triton.local_server import LocalTritonServer
from kmr import contract
from tests.support.compare import assert_same_results
from tests.support.object_store import FailingClient, SeaweedS3
from tests.support.served_stack import (
    build_repository,
    export_version,
    model_names,
    onnx_session,
    reference,
    save_tiny_artifacts,
)

BUCKET = "models"
NAMES = model_names()
RERANK = NAMES[contract.GRAPH_RERANK]


@pytest.fixture(scope="module")
def store(s3_store) -> SeaweedS3:
    """The module's SeaweedFS store (tests/conftest.py), with a bucket for the tests."""
    s3_store.create_bucket(BUCKET)
    return s3_store


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, Any]:
    """A local repository with version 1 of both graphs, and the artifacts of a v2."""
    root = tmp_path_factory.mktemp("local")
    repo, model_path, version_dirs = build_repository(root, seed=0)
    v2_model = save_tiny_artifacts(root / "artifacts-seed1", seed=1)
    return {"repo": repo, "model": model_path, "v1": version_dirs,
            "v2": export_version(v2_model, repo)}  # local v2, other weights


def _url(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


def test_publish_uploads_every_file_verified_then_marker_when_publishing(store, local):
    started = time.perf_counter()
    result = publish_version(local["repo"], RERANK, 1, _url("pub"))
    seconds = time.perf_counter() - started
    print(f"publish {RERANK} v1: {len(result.files)} files, {result.bytes} bytes, {seconds:.2f} s")

    assert find_complete_versions(_url("pub"), RERANK) == [1]
    marker = read_marker(_url("pub"), RERANK, 1)
    version_dir = local["v1"][contract.GRAPH_RERANK]
    local_files = sorted(p.relative_to(version_dir).as_posix()
                         for p in version_dir.rglob("*") if p.is_file())
    assert sorted(marker["files"]) == local_files
    for rel, entry in marker["files"].items():
        assert entry["sha256"] == file_digests(version_dir / rel)[0]
    client = store.client()
    body = client.get_object(Bucket=BUCKET, Key=f"pub/{RERANK}/config.pbtxt")["Body"].read()
    local_config = (local["repo"] / RERANK / "config.pbtxt").read_text()
    assert body.decode() == with_pin(local_config, 1)  # a new model: its first version
    assert result.config_uploaded and serving_version(_url("pub"), RERANK) == 1


def test_publish_refuses_a_complete_version_unless_forced_when_publishing_twice(store, local):
    publish_version(local["repo"], RERANK, 1, _url("twice"))
    with pytest.raises(ExportError, match="already complete"):
        publish_version(local["repo"], RERANK, 1, _url("twice"))
    again = publish_version(local["repo"], RERANK, 1, _url("twice"), force=True)
    assert not again.config_uploaded  # unchanged
    assert find_complete_versions(_url("twice"), RERANK) == [1]


def test_killed_upload_leaves_an_incomplete_version_when_the_uploader_dies(store, local):
    publish_version(local["repo"], RERANK, 1, _url("killed"))
    failing = FailingClient(store.client(), allowed=3)
    with pytest.raises(ExportError, match="stays incomplete"):
        publish_version(local["repo"], RERANK, 1, _url("killed/other"), client=failing)
    assert failing.uploads == 3
    assert remote_versions(_url("killed/other"), RERANK) == [1]  # the half-written folder
    assert find_complete_versions(_url("killed/other"), RERANK) == []
    keys = [o["Key"] for o in store.client().list_objects_v2(
        Bucket=BUCKET, Prefix="killed/other/")["Contents"]]
    assert len(keys) == 3 and not any(k.endswith((MARKER_FILE, "config.pbtxt")) for k in keys)
    with pytest.raises(ExportError, match="not complete"):
        pinned_load_config(_url("killed/other"), RERANK, 1)


def test_cli_publish_and_export_write_complete_versions_when_repo_is_s3(store, local, capsys):
    from export.cli import main

    assert main(["publish", "--from", str(local["repo"]), "--name", RERANK,
                 "--to", _url("cli")]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["publish", "--from", str(local["repo"]), "--name", RERANK,
                 "--to", _url("cli")]) == 1
    assert "already complete" in capsys.readouterr().err

    started = time.perf_counter()
    assert main(["export", "--model", str(local["model"]), "--repo", _url("cli-export"),
                 "--name", "cx", "--graph", "both", "--k", "5", "--backend", "python",
                 "--ids", "index"]) == 0
    print(f"export --repo s3:// (both graphs): {time.perf_counter() - started:.1f} s")
    for name in ("cx_rerank", "cx_retrieve"):
        assert find_complete_versions(_url("cli-export"), name) == [1]
    assert main(["export", "--model", str(local["model"]), "--repo", _url("cli-export"),
                 "--name", "cx", "--graph", "both", "--k", "5", "--backend", "python",
                 "--ids", "index"]) == 0  # next version
    assert find_complete_versions(_url("cli-export"), "cx_rerank") == [1, 2]


def test_publishing_keeps_the_pin_and_a_pin_moves_only_to_complete_versions(store, local):
    url = _url("pins")
    publish_version(local["repo"], RERANK, 1, url)
    assert publish_version(local["repo"], RERANK, 2, url).config_uploaded is False
    assert serving_version(url, RERANK) == 1  # publishing is not deploying
    with pytest.raises(ExportError, match="not complete"):
        pin_serving_version(url, RERANK, 3)
    assert pin_serving_version(url, RERANK, 2) == 1
    assert serving_version(url, RERANK) == 2
    body = store.client().get_object(Bucket=BUCKET, Key=f"pins/{RERANK}/config.pbtxt")["Body"]
    assert 'version_policy {\n  specific {\n    versions: 2' in body.read().decode()
    publish_version(local["repo"], RERANK, 1, url, force=True)  # republishing an old one
    assert serving_version(url, RERANK) == 2


def test_cli_pin_shows_and_moves_the_pin(store, local, capsys):
    from export.cli import main

    url = _url("cli-pin")
    publish_version(local["repo"], RERANK, 1, url)
    publish_version(local["repo"], RERANK, 2, url)
    assert main(["pin", "--repo", url, "--name", RERANK]) == 0
    assert "pinned to version 1 (complete: [1, 2])" in capsys.readouterr().out
    assert main(["pin", "--repo", url, "--name", RERANK, "--version", "2"]) == 0
    assert "pinned to version 2 (was 1)" in capsys.readouterr().out
    assert serving_version(url, RERANK) == 2
    assert main(["pin", "--repo", url, "--name", RERANK, "--version", "5"]) == 1
    assert "Version 5 of" in capsys.readouterr().err and serving_version(url, RERANK) == 2


def test_legacy_unpinned_config_gets_the_newest_complete_version(store, local):
    url = _url("legacy")
    publish_version(local["repo"], RERANK, 1, url)
    client = store.client()
    client.put_object(Bucket=BUCKET, Key=f"legacy/{RERANK}/config.pbtxt",
                      Body=(local["repo"] / RERANK / "config.pbtxt").read_bytes())
    assert serving_version(url, RERANK) is None  # as published before pins existed
    publish_version(local["repo"], RERANK, 2, url)
    assert serving_version(url, RERANK) == 1  # what its `latest` policy served


def test_download_is_checked_against_the_marker(store, local, tmp_path):
    url = _url("download")
    publish_version(local["repo"], RERANK, 1, url)
    folder = download_version(url, RERANK, 1, tmp_path / "copy")
    source = local["v1"][contract.GRAPH_RERANK]
    assert (folder / contract.ONNX_FILE).read_bytes() == (source / contract.ONNX_FILE).read_bytes()
    with pytest.raises(ExportError, match="not complete"):
        download_version(url, RERANK, 2, tmp_path / "missing")
    size = (source / contract.ONNX_FILE).stat().st_size  # same size: only the sha256 tells
    store.client().put_object(Bucket=BUCKET, Key=f"download/{RERANK}/1/{contract.ONNX_FILE}",
                              Body=b"x" * size)
    with pytest.raises(ExportError, match="differs from the sha256"):
        download_version(url, RERANK, 1, tmp_path / "changed")


def test_rollout_from_an_unreachable_store_fails_before_any_replica(monkeypatch):
    from export.rollout import rollout

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ExportError, match="Object store s3://models/x failed"):
        rollout(["127.0.0.1:1"], RERANK, 2, repo="s3://models/x")  # the replica is never called


@pytest.mark.parametrize(("url", "says"), [("gs://b/p", "not supported yet"),
                                           ("https://host/repo", "not a supported"),
                                           ("file:///tmp/x", "not a supported")])
def test_cli_refuses_other_schemes_when_exporting_or_publishing(tmp_path, local, capsys,
                                                                monkeypatch, url, says):
    from export.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", str(local["model"]), "--repo", url, "--k", "3"]) == 1
    assert says in capsys.readouterr().err
    assert main(["publish", "--from", str(local["repo"]), "--name", RERANK, "--to", url]) == 1
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _infer(client: grpcclient.InferenceServerClient, model: str, kind: str,
           users: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in ((contract.USER_ID, users.reshape(-1, 1)),
                        (contract.INPUTS[kind][1], ids)):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return {out: result.as_numpy(out) for out in contract.OUTPUTS[kind]}


def _load_pinned(client: grpcclient.InferenceServerClient, url: str, name: str,
                 version: int) -> float:
    started = time.perf_counter()
    client.load_model(name, config=pinned_load_config(url, name, version))
    assert client.is_model_ready(name, str(version))
    return time.perf_counter() - started


def _assert_serves(client: grpcclient.InferenceServerClient, version_dir: Path) -> None:
    rng = np.random.default_rng(7)
    users = rng.integers(0, 24, size=6)
    candidates = np.stack([rng.choice(60, 12, replace=False) for _ in users])
    want = reference(onnx_session(version_dir), contract.GRAPH_RERANK, users, candidates)
    got = _infer(client, RERANK, contract.GRAPH_RERANK, users, candidates)
    assert set(want) >= {contract.TOP_ITEM_IDS, contract.TOP_SCORES}
    assert_same_results(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_triton_loads_only_complete_versions_from_s3_when_in_explicit_mode(
        store: SeaweedS3, local, triton_home, tmp_path):
    url, served = _url("served"), store.triton_url(BUCKET, "served")
    publish_version(local["repo"], RERANK, 1, url)
    v2_dirs = local["v2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    server = LocalTritonServer(empty, model_control_mode="explicit", installation=triton_home,
                               extra_args=[f"--model-repository={served}"])
    with server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        seconds = _load_pinned(client, url, RERANK, 1)
        print(f"explicit load of {RERANK} v1 from {served}: {seconds:.2f} s")
        _assert_serves(client, local["v1"][contract.GRAPH_RERANK])

        with pytest.raises(ExportError):  # killed midway: no marker, config untouched
            publish_version(local["repo"], RERANK, 2, url,
                            client=FailingClient(store.client(), allowed=2))
        assert remote_versions(url, RERANK) == [1, 2]
        with pytest.raises(ExportError, match="not complete"):
            pinned_load_config(url, RERANK, 2)
        _load_pinned(client, url, RERANK, 1)  # a reload stays on v1, never the half v2
        _assert_serves(client, local["v1"][contract.GRAPH_RERANK])

        retry = publish_version(local["repo"], RERANK, 2, url)  # the retry completes v2
        print(f"publish v2: {len(retry.files)} files, {retry.bytes} bytes, {retry.seconds:.2f} s")
        seconds = _load_pinned(client, url, RERANK, 2)
        print(f"explicit load of {RERANK} v2 from {served}: {seconds:.2f} s")
        assert not client.is_model_ready(RERANK, "1")
        _assert_serves(client, v2_dirs[contract.GRAPH_RERANK])
    assert json.loads(pinned_load_config(url, RERANK, 2))["version_policy"] == {
        "specific": {"versions": ["2"]}}
