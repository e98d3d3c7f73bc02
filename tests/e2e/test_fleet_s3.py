"""The whole fleet in one run: a real S3 store, three replicas loading from it, nginx in front.

SeaweedFS (real S3, tests/conftest.py), three tritonservers started the way
`kmr-export deploy` starts them (``--model-repository=s3://...``, explicit model control,
``--load-model``; no local models), and a real nginx balancing gRPC and HTTP. Load runs
through nginx with raw tritonclient gRPC and the project client over HTTP; every answer
is checked against onnxruntime on the version that answered.

In order: a half-uploaded version and a killed replica (its restart, the orchestrator's
job, is done by the test: it comes back on the store's pinned version, never on the half
one); a rollout from the store (refused for the half version, then v2 under load, the pin
moves); a version that fails to load stops at the first replica; a rollback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from export.errors import ExportError
from export.rollout import rollback, rollout
from export.rollout.canary import canary_cases
from export.storage import (
    find_complete_versions,
    publish_version,
    remote_versions,
    serving_version,
)
from export.triton.local_server import LocalTritonServer
from tests.support.load_balancer import (
    CheckedLoad,
    ClientCheckedLoad,
    NginxBalancer,
    require_nginx,
)
from tests.support.object_store import FailingClient
from tests.support.replicas import (
    drained,
    export_rerank,
    grpc_urls,
    running,
    served_versions,
)

pytestmark = pytest.mark.slow
NAME = "fleet"
BUCKET, PREFIX = "models", "fleet"
URL = f"s3://{BUCKET}/{PREFIX}"
REPLICAS = 3
THREADS = 3


@pytest.fixture(scope="module")
def fleet(s3_store, triton_home, tmp_path_factory):
    """(replicas, nginx, local repo, references by version); every replica on version 1."""
    require_nginx()
    s3_store.create_bucket(BUCKET)
    root = tmp_path_factory.mktemp("fleet")
    repo = root / "repo"
    dirs = {version: export_rerank(root, repo, NAME, seed=version - 1) for version in (1, 2, 3, 4)}
    publish_version(repo, NAME, 1, URL)  # a new model: the store's config pins v1
    empty = root / "no-local-models"
    empty.mkdir()
    replicas = [LocalTritonServer(empty, model_control_mode="explicit", installation=triton_home,
                                  extra_args=[f"--model-repository="
                                              f"{s3_store.triton_url(BUCKET, PREFIX)}"])
                for _ in range(REPLICAS)]
    references = {str(v): canary_cases(dirs[v], 16, requests_from=dirs[1]) for v in (1, 2)}
    with running(replicas), NginxBalancer([s.grpc_url for s in replicas],
                                          [s.http_url for s in replicas]) as lb:
        yield replicas, lb, repo, references


def _restart(server: LocalTritonServer) -> None:
    """What Kubernetes does with a dead pod: the same command again (same ports here)."""
    server.stop()
    server.start()
    server.wait_until_ready()


def _loads(lb, references) -> tuple[CheckedLoad, ClientCheckedLoad]:
    return (CheckedLoad(lb.grpc_url, NAME, references, threads=THREADS),
            ClientCheckedLoad(lb.http_url, NAME, references, threads=1))


def test_a_restarted_replica_loads_the_pinned_version_never_a_half_upload(fleet, s3_store):
    replicas, lb, repo, references = fleet
    assert served_versions(replicas, NAME) == [[1]] * REPLICAS
    publish_version(repo, NAME, 2, URL)  # complete, not rolled out: the pin stays on 1
    with pytest.raises(ExportError, match="stays incomplete"):
        publish_version(repo, NAME, 3, URL, client=FailingClient(s3_store.client(), allowed=1))
    assert remote_versions(URL, NAME) == [1, 2, 3]
    assert find_complete_versions(URL, NAME) == [1, 2] and serving_version(URL, NAME) == 1

    raw, project = _loads(lb, references)
    victim = replicas[0]
    with raw, project:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        time.sleep(1.0)
        _restart(victim)
        restarted_at = time.monotonic()
        time.sleep(3.0)  # > nginx fail_timeout: the restarted replica takes traffic again
    counts, through_client = raw.snapshot(), project.snapshot()
    print("kill + restart:", counts, "project client:", through_client,
          f"restart took {restarted_at - killed_at:.1f} s")
    # never 2 (not rolled out), never 3 (half uploaded)
    assert served_versions(replicas, NAME) == [[1]] * REPLICAS
    assert counts["wrong"] == 0 and through_client["wrong"] == 0, (counts, through_client)
    assert counts["by_version"].keys() == {"1"}, counts
    assert counts["failed"] <= THREADS, counts  # at most the requests in flight on the victim
    assert not [t for t in raw.failures_at if t > killed_at + 0.5], raw.errors
    assert through_client["failed"] == 0, through_client  # its retries cover the kill
    assert counts["ok"] > 50 and through_client["ok"] > 10, (counts, through_client)


def test_rollout_from_the_store_refuses_the_half_version_then_moves_the_pin(fleet):
    replicas, lb, _, references = fleet
    before = served_versions(replicas, NAME)
    with pytest.raises(ExportError, match="not complete"):
        rollout(grpc_urls(replicas), NAME, 3, repo=URL)
    assert served_versions(replicas, NAME) == before

    raw, project = _loads(lb, references)
    with raw, project:
        time.sleep(1.0)
        report = rollout(grpc_urls(replicas), NAME, 2, repo=URL, **drained(lb))
        time.sleep(1.0)
    counts, through_client = raw.snapshot(), project.snapshot()
    print(report.summary(), counts, through_client)
    assert report.completed and report.pinned_on_store, report.summary()
    assert served_versions(replicas, NAME) == [[2]] * REPLICAS and serving_version(URL, NAME) == 2
    for load in (counts, through_client):
        assert load["wrong"] == 0 and load["failed"] == 0, load
    assert counts["by_version"].get("1", 0) > 0 and counts["by_version"].get("2", 0) > 0

    _restart(replicas[-1])
    # a replica started after the rollout loads the new pin
    assert served_versions(replicas, NAME)[-1] == [2]


def _break_python_backend(version_dir: Path) -> None:
    """Its model.onnx still loads in onnxruntime (the canary's copy); its model.py fails."""
    shutil.rmtree(version_dir / "__pycache__", ignore_errors=True)
    source = version_dir / "model.py"
    source.write_text(source.read_text() + "\n\nraise RuntimeError('model.py of another "
                      "release')\n")


def test_a_version_that_fails_to_load_stops_at_the_first_replica(fleet):
    replicas, lb, repo, references = fleet
    if served_versions(replicas, NAME) != [[2]] * REPLICAS:
        assert rollout(grpc_urls(replicas), NAME, 2, repo=URL).completed
    _break_python_backend(repo / NAME / "4")
    publish_version(repo, NAME, 4, URL)
    raw, _ = _loads(lb, references)
    with raw:
        time.sleep(0.5)
        report = rollout(grpc_urls(replicas), NAME, 4, repo=URL, **drained(lb))
        time.sleep(0.5)
    counts = raw.snapshot()
    print(report.summary(), counts)
    first = report.replicas[0]
    assert not report.completed and not report.pinned_on_store
    assert len(report.replicas) == 1 and report.untouched == grpc_urls(replicas)[1:]
    assert not first.loaded and first.restored_to == 2, report.summary()
    assert served_versions(replicas, NAME) == [[2]] * REPLICAS and serving_version(URL, NAME) == 2
    assert counts["wrong"] == 0 and counts["failed"] == 0 and counts["ok"] > 20, counts


def test_rollback_from_the_store_moves_the_pin_back(fleet):
    replicas, lb, _, references = fleet
    if served_versions(replicas, NAME) != [[2]] * REPLICAS:
        assert rollout(grpc_urls(replicas), NAME, 2, repo=URL).completed
    raw, _ = _loads(lb, references)
    with raw:
        report = rollback(grpc_urls(replicas), NAME, 2, repo=URL, **drained(lb))
    assert report.completed and report.version == 1, report.summary()
    assert served_versions(replicas, NAME) == [[1]] * REPLICAS and serving_version(URL, NAME) == 1
    counts = raw.snapshot()
    assert counts["wrong"] == 0 and counts["failed"] == 0, counts


def test_cli_rollout_from_the_store_prints_the_pin(fleet, capsys):
    from export.cli import main

    replicas = fleet[0]
    urls = ",".join(grpc_urls(replicas))
    assert main(["rollout", "--replicas", urls, "--name", NAME, "--version", "2",
                 "--repo", URL, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["completed"] and printed["pinned_on_store"], printed
    assert served_versions(replicas, NAME) == [[2]] * REPLICAS and serving_version(URL, NAME) == 2
    assert main(["rollout", "--replicas", urls, "--name", NAME, "--version", "3",
                 "--repo", URL]) == 1
    assert "Version 3 of 'fleet' is not complete" in capsys.readouterr().err
