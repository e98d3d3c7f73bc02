"""Rollout across two real tritonservers behind a real nginx, under checked load.

One shared repository (explicit model control): version 1 is exported before the
replicas start (so they load it), version 2 after (explicit mode never polls: it is
invisible until a rollout loads it). Load: threads of raw tritonclient gRPC through nginx,
each answer checked against onnxruntime on the version that answered.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from export.rollout import rollback, rollout
from export.rollout.canary import canary_cases
from export.triton.local_server import LocalTritonServer
from tests.support.load_balancer import CheckedLoad, NginxBalancer, require_nginx
from tests.support.replicas import (
    drained,
    export_rerank,
    grpc_urls,
    running,
    served_versions,
)

pytestmark = pytest.mark.slow
NAME = "ro"
THREADS = 4
FAILED_BOUND_ROLLOUT = 0  # goal and bound: Triton swaps versions without refusing requests


@pytest.fixture(scope="module")
def cluster(triton_home, tmp_path_factory):
    """(servers, nginx, repo, references by version) with both replicas on version 1."""
    require_nginx()
    root = tmp_path_factory.mktemp("rollout")
    repo = root / "repo"
    v1 = export_rerank(root, repo, NAME, seed=0)
    servers = [LocalTritonServer(repo, model_control_mode="explicit", installation=triton_home)
               for _ in range(2)]
    with running(servers):
        v2 = export_rerank(root, repo, NAME, seed=1)
        references = {str(v): canary_cases(d, 16, requests_from=v1)
                      for v, d in ((1, v1), (2, v2))}
        with NginxBalancer([s.grpc_url for s in servers], [s.http_url for s in servers]) as lb:
            yield servers, lb, repo, references


def _set_all(servers, repo, version: int) -> None:
    report = rollout(grpc_urls(servers), NAME, version, repo=repo)
    assert report.completed, report.summary()


def test_rollout_v2_under_load_no_wrong_and_no_failed_answers(cluster):
    servers, lb, repo, references = cluster
    _set_all(servers, repo, 1)
    with CheckedLoad(lb.grpc_url, NAME, references, threads=THREADS) as load:
        time.sleep(1.0)
        report = rollout(grpc_urls(servers), NAME, 2, repo=repo, **drained(lb))
        time.sleep(1.0)
        during = load.snapshot()
        ok_before_tail = load.by_version.get("1", 0)
        time.sleep(1.0)
    counts = load.snapshot()
    print(report.summary(), counts)
    assert report.completed, report.summary()
    assert [r.previous for r in report.replicas] == [[1], [1]]
    assert served_versions(servers, NAME) == [[2], [2]]
    assert counts["wrong"] == 0, counts
    assert counts["failed"] <= FAILED_BOUND_ROLLOUT, counts
    assert counts["by_version"].get("1", 0) > 0 and counts["by_version"].get("2", 0) > 0
    assert counts["by_version"]["1"] == ok_before_tail  # once rolled out, only v2 answers
    assert during["ok"] > 50, during

    back = rollback(grpc_urls(servers), NAME, 2, repo=repo, **drained(lb))
    assert back.completed and back.version == 1, back.summary()
    assert served_versions(servers, NAME) == [[1], [1]]


def _broken_versions(repo: Path, canary_repo: Path, kind: str) -> None:
    """Version 3: served folder broken (corrupt onnx, or v1's weights), local copy = v2."""
    served, local = repo / NAME / "3", canary_repo / NAME / "3"
    shutil.rmtree(served, ignore_errors=True)
    shutil.rmtree(local, ignore_errors=True)
    shutil.copytree(repo / NAME / ("2" if kind == "corrupt" else "1"), served)
    shutil.copytree(repo / NAME / "2", local)
    if kind == "corrupt":
        (served / "model.onnx").write_bytes(b"not an onnx file")


@pytest.mark.parametrize("kind", ["corrupt", "wrong_weights"])
def test_broken_version_stops_at_first_replica(cluster, tmp_path, kind):
    servers, lb, repo, references = cluster
    _set_all(servers, repo, 2)
    _broken_versions(repo, tmp_path, kind)
    try:
        with CheckedLoad(lb.grpc_url, NAME, references, threads=THREADS) as load:
            time.sleep(0.5)
            report = rollout(grpc_urls(servers), NAME, 3, repo=tmp_path, **drained(lb))
            time.sleep(0.5)
    finally:
        shutil.rmtree(repo / NAME / "3")
    counts = load.snapshot()
    print(report.summary(), counts)
    first = report.replicas[0]
    assert not report.completed and len(report.replicas) == 1
    assert report.untouched == [servers[1].grpc_url]
    assert first.loaded is (kind == "wrong_weights") and not first.canary_ok
    assert ("canary request 0" if kind == "wrong_weights" else "failed") in first.error
    assert first.restored_to == 2
    assert served_versions(servers, NAME) == [[2], [2]]
    assert counts["wrong"] == 0 and "3" not in counts["by_version"], counts
    assert counts["failed"] <= FAILED_BOUND_ROLLOUT, counts


def test_broken_local_copy_refused_before_any_replica(cluster, tmp_path):
    servers, _, repo, _ = cluster
    _broken_versions(repo, tmp_path, "corrupt")
    shutil.rmtree(repo / NAME / "3")
    (tmp_path / NAME / "3" / "model.onnx").write_bytes(b"junk")
    from export.errors import ExportError

    before = served_versions(servers, NAME)
    with pytest.raises(ExportError, match="does not load in onnxruntime"):
        rollout(grpc_urls(servers), NAME, 3, repo=tmp_path)
    assert served_versions(servers, NAME) == before


def test_killed_replica_only_in_flight_requests_fail(cluster):
    servers, lb, repo, references = cluster
    _set_all(servers, repo, 2)
    victim = servers[0]
    with CheckedLoad(lb.grpc_url, NAME, references, threads=THREADS) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        time.sleep(2.0)
        after_kill = load.snapshot()
    counts = load.snapshot()
    late = [t for t in load.failures_at if t > killed_at + 0.5]
    ok_after = sum(1 for t, _ in load.latencies if t > killed_at + 0.5)
    print("kill:", counts, "late failures", len(late), "ok after", ok_after)
    assert counts["wrong"] == 0, counts
    assert counts["failed"] <= THREADS, counts  # at most one in flight per thread
    assert not late and ok_after > 50, (late, ok_after, after_kill)

    victim.stop()  # reaps the group, removes shm; the restart is the test's job here
    victim.start()
    victim.wait_until_ready()
    _set_all(servers, repo, 2)
    with CheckedLoad(lb.grpc_url, NAME, references, threads=THREADS) as load:
        time.sleep(3.0)  # > nginx fail_timeout: the restarted replica is tried again
    assert load.snapshot()["failed"] == 0 and load.ok > 50, load.snapshot()


def test_cli_rollout_and_rollback(cluster, capsys):
    from export.cli import main

    servers, _, repo, _ = cluster
    urls = ",".join(grpc_urls(servers))
    _set_all(servers, repo, 1)
    assert main(["rollout", "--replicas", urls, "--name", NAME, "--version", "2",
                 "--repo", str(repo)]) == 0
    assert "completed" in capsys.readouterr().out and served_versions(servers, NAME) == [[2], [2]]
    assert main(["rollout", "--replicas", urls, "--name", NAME, "--version", "2",
                 "--repo", str(repo), "--rollback"]) == 0
    assert served_versions(servers, NAME) == [[1], [1]]
    assert main(["rollout", "--replicas", urls, "--name", NAME, "--version", "7",
                 "--repo", str(repo)]) == 1
    assert "error: no model.onnx for 'ro' version 7" in capsys.readouterr().err
