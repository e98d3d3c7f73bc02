"""Faults against a real local tritonserver under load: restart, hot update, killed export.

The load comes from benchmarks/load_test.py (`BackgroundLoad`): async gRPC clients with
retries, every answer checked against onnxruntime on the exported model.onnx, and every
failed call counted (the generator's own counters plus each client's ``stats``).
The server comes from scripts/setup_triton.sh; without it these tests fail (never skip).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from client import ModelAdmin, RecommenderClient
from export.triton.local_server import LocalTritonServer
from export.triton.repository import (
    STAGING_PREFIX,
    clean_stale_staging,
    existing_versions,
    staging_area,
)
from kmr import contract
from tests.support.load import BackgroundLoad, LoadResult, run_load
from tests.support.served_stack import (
    MAX_BATCH,
    K,
    ServedStack,
    export_version,
    onnx_session,
    save_tiny_artifacts,
    start_served_stack,
)

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 8


def _load(stack: ServedStack, url: str, references: dict, **kwargs) -> BackgroundLoad:
    kwargs = {"concurrency": CONCURRENCY, "check_fraction": 1.0, **kwargs}
    return BackgroundLoad(url, stack.names, references, num_users=stack.num_users,
                          num_items=stack.num_items, **kwargs)


def _retries(result: LoadResult) -> int:
    return sum(s["retries"] for s in result.client_stats.values())


def _failures(result: LoadResult) -> int:
    return sum(s["failures"] for s in result.client_stats.values())


def _describe(result: LoadResult) -> str:
    return f"{result.summary()} wrong={result.wrong_samples[:3]}"


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - start


# -- (a) server killed and restarted under load --------------------------------------------
def test_client_recovers_with_counted_retries_when_server_is_killed_and_restarted(
    served_stack, triton_home
) -> None:
    # A second server on the session stack's repository, so the shared one stays up.
    server = LocalTritonServer(served_stack.repo, installation=triton_home)
    with server:
        ports = (server.grpc_url, server.http_url)
        with _load(served_stack, server.grpc_url, {"v1": served_stack.sessions},
                   retries=12, backoff=0.05) as load:
            killed_at = load.wait_for_answers(20)
            regions = server.shared_memory_regions()
            os.kill(server.pid, signal.SIGKILL)  # our own child, by pid
            server.stop()  # reaps it and its python-backend stubs (its process group)
            leaked = [p for p in regions if p.exists()]
            server.start()  # same ports: they are kept after the first start
            assert (server.grpc_url, server.http_url) == ports
            server.wait_until_ready()
            back_at = load.elapsed()
            load.wait_for_answers(CONCURRENCY)  # clients back off: wait, don't guess
        result = load.result
    downtime = back_at - killed_at
    print(f"\n[measure] SIGKILL + restart: server back after {downtime:.1f} s; {_describe(result)}")
    assert result.wrong == 0, _describe(result)
    assert result.error_count == 0 == _failures(result), _describe(result)
    assert _retries(result) > 0, "the outage must show in client.stats.retries"
    assert any(t > back_at for t, _ in result.timeline), "no answer after the restart"
    assert result.ok == result.requests > 0
    assert regions and not leaked, f"shared memory left by the killed server: {leaked}"


def test_load_generator_counts_failed_calls_when_server_stays_down(served_stack) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    # Every call fails after its retries and is counted, none is swallowed.
    result = run_load(url, served_stack.names, {"v1": served_stack.sessions}, seconds=1.0,
                      concurrency=2, num_users=served_stack.num_users,
                      num_items=served_stack.num_items, retries=1, backoff=0.01)
    assert result.ok == 0 and result.error_count == result.requests > 0
    assert set(result.errors) == {"ServerUnavailableError"}
    assert _failures(result) >= result.error_count  # + the failed up-front config fetches
    assert _retries(result) >= result.requests  # retries=1: each request was tried twice


def test_background_load_wait_raises_timeout_when_no_request_is_answered(served_stack) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    with _load(served_stack, url, {"v1": served_stack.sessions}, concurrency=1, retries=0) \
            as load:
        with pytest.raises(TimeoutError, match="1 answers did not come within 0.5 s"):
            load.wait_for_answers(1, timeout=0.5)
        waited = load.elapsed()
    assert load.result is load.live and load.result.ok == 0 < load.result.error_count
    assert all(t <= waited for t, *_ in load.result.error_samples)  # one clock


# -- (b) hot model update under load, (c) export killed mid-write ---------------------------
@pytest.fixture(scope="module")
def poll_stack(triton_home, tmp_path_factory):
    with start_served_stack(tmp_path_factory.mktemp("poll_stack"), installation=triton_home,
                            model_control_mode="poll", repository_poll_secs=1) as stack:
        yield stack


def _served_versions(stack: ServedStack) -> dict[str, list[str]]:
    with ModelAdmin(stack.grpc_url) as admin:
        rows = admin.list_models()
    served: dict[str, list[str]] = {}
    for row in rows:
        if row.state == "READY":
            served.setdefault(row.name, []).append(row.version)
    return {name: sorted(v) for name, v in served.items()}


def _latest_sessions(stack: ServedStack) -> dict[str, object]:
    return {kind: onnx_session(stack.repo / name / str(existing_versions(stack.repo, name)[-1]))
            for kind, name in stack.names.items()}


def test_hot_update_switches_answers_without_failed_requests_when_exported_under_load(
    poll_stack, tmp_path
) -> None:
    stack = poll_stack
    new_model = save_tiny_artifacts(tmp_path / "artifacts-v2", seed=1)
    # Reference of the new weights: the same export into a scratch repository.
    scratch = export_version(new_model, tmp_path / "scratch")
    references = {"v1": stack.sessions,
                  "v2": {kind: onnx_session(d) for kind, d in scratch.items()}}
    users = np.arange(4)
    assert not np.array_equal(  # the versions are distinguishable
        references["v1"]["retrieve"].run(None, {"user_id": users,
                                                "exclude_item_ids": -np.ones((4, 1), int)})[0],
        references["v2"]["retrieve"].run(None, {"user_id": users,
                                                "exclude_item_ids": -np.ones((4, 1), int)})[0])
    before = _served_versions(stack)
    with _load(stack, stack.grpc_url, references) as load:
        export_started = load.wait_for_answers(20)
        published = export_version(new_model, stack.repo)
        exported_at = load.elapsed()
        assert {d.name for d in published.values()} == {"2"}
        only_v2 = {n: ["2"] for n in stack.names.values()}
        wait = _wait_for(lambda: _served_versions(stack) == only_v2, 60,
                         "the server serving version 2 only")
        swapped_at = load.elapsed()
        time.sleep(0.6)
        load.wait_for_answers(20)  # answers later than swapped_at + 0.5
    result = load.result
    v2_times = [t for t, label in result.timeline if label == "v2"]
    first_v2 = v2_times[0] if v2_times else None
    print(f"\n[measure] hot update: export {exported_at - export_started:.1f} s, version 2 "
          f"served {wait:.1f} s after publish; first v2 answer at {first_v2} s "
          f"(publish at {exported_at:.1f} s); {_describe(result)}")
    assert before == {n: ["1"] for n in stack.names.values()}
    assert result.error_count == 0 == _failures(result), _describe(result)
    assert result.wrong == 0, _describe(result)
    assert result.matched.get("v1", 0) > 0 and result.matched.get("v2", 0) > 0
    late = [label for t, label in result.timeline if t > swapped_at + 0.5]
    assert late and set(late) == {"v2"}, f"answers after the swap: {sorted(set(late))}"


def _staging_dirs(repo: Path, pid: int) -> list[Path]:
    tag = f"{STAGING_PREFIX}{pid}-"
    places = [*repo.glob(f"{tag}*"), *repo.glob(f"*/{tag}*"), *staging_area(repo).glob(f"{tag}*")]
    return [p for p in places if p.is_dir()]


def test_killed_export_stays_invisible_and_serving_version_answers_when_killed_mid_write(
    poll_stack, tmp_path
) -> None:
    stack = poll_stack
    versions_before = {name: existing_versions(stack.repo, name) for name in stack.names.values()}
    served_before = _served_versions(stack)
    references = {"served": _latest_sessions(stack)}
    model = save_tiny_artifacts(tmp_path / "artifacts-v3", seed=2)
    with _load(stack, stack.grpc_url, references, concurrency=4) as load:
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        export = subprocess.Popen(
            [sys.executable, "-m", "export", "export", "--model", str(model), "--repo",
             str(stack.repo), "--name", "rel", "--graph", "both", "--k", str(K),
             "--backend", "python", "--max-batch-size", str(MAX_BATCH), "--ids", "index"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # Kill it once a complete-looking model.onnx sits in its staging folder.
            def onnx_staged() -> bool:
                if export.poll() is not None:
                    out = export.stdout.read().decode(errors="replace")[-2000:]
                    pytest.fail(f"the export ended (code {export.returncode}) before it "
                                f"could be killed mid-write:\n{out}")
                return any(p.rglob(contract.ONNX_FILE) for p in _staging_dirs(stack.repo,
                                                                              export.pid))
            _wait_for(onnx_staged, 120, "a staged model.onnx", interval=0.01)
            os.kill(export.pid, signal.SIGKILL)  # our own child, by pid
            assert export.wait(timeout=30) == -signal.SIGKILL
        finally:
            if export.poll() is None:
                export.kill()
                export.wait()
            export.stdout.close()
        leftovers = _staging_dirs(stack.repo, export.pid)
        time.sleep(3.5)  # > 3 poll intervals of the server
        served_after = _served_versions(stack)
    result = load.result
    print(f"\n[measure] killed export: leftovers {[p.name for p in leftovers]}; "
          f"{_describe(result)}")
    assert leftovers, "the kill should leave the staging folder behind"
    assert {name: existing_versions(stack.repo, name) for name in stack.names.values()} == \
        versions_before
    assert served_after == served_before
    assert result.error_count == 0 and result.wrong == 0, _describe(result)
    assert result.matched.get("served", 0) > 0
    with RecommenderClient(stack.grpc_url, stack.names["retrieve"]) as client:
        answer = client.recommend([0, 1, 2], raw_ids=False)
    expected = references["served"]["retrieve"].run(
        None, {"user_id": np.arange(3), "exclude_item_ids": -np.ones((3, 1), np.int64)})
    np.testing.assert_array_equal(answer.item_indices, expected[0])
    # The next export (or anyone) removes what the dead one left.
    removed = clean_stale_staging(stack.repo)
    assert set(leftovers) <= set(removed)
    assert not _staging_dirs(stack.repo, export.pid)


# -- load: the short version of benchmarks/load_test.py ------------------------------------
@pytest.mark.slow
def test_load_has_no_errors_or_wrong_answers_when_run_briefly(served_stack) -> None:
    result = run_load(served_stack.grpc_url, served_stack.names, {"v1": served_stack.sessions},
                      seconds=5.0, concurrency=8, check_fraction=0.25,
                      num_users=served_stack.num_users, num_items=served_stack.num_items)
    summary = result.summary()
    print(f"\n[measure] load 5 s at concurrency 8: {summary['throughput_rps']} req/s, "
          f"p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms, "
          f"{result.checked} checked")
    assert result.error_count == 0 and result.wrong == 0, summary
    assert result.ok == result.requests > 100 and result.checked > 0
    assert set(result.matched) == {"v1"}
