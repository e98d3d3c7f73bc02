"""`kmr-export serve`'s supervision against a real tritonserver: restart on death, give up."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.triton.local_server import LocalTritonServer, TritonServerError
from export.triton.supervisor import RestartPolicy, Supervisor, describe_exit
from kmr import contract
from tests.support.handmade_graphs import add_model, build_rerank_onnx

pytestmark = pytest.mark.triton


def _answers(url: str) -> bool:
    with grpcclient.InferenceServerClient(url) as client:
        users = grpcclient.InferInput(contract.USER_ID, [1, 1], "INT64")
        users.set_data_from_numpy(np.array([[1]], np.int64))
        items = grpcclient.InferInput(contract.ITEM_IDS, [1, 3], "INT64")
        items.set_data_from_numpy(np.array([[0, 1, 2]], np.int64))
        result = client.infer("sup_rerank", [users, items])
        return result.as_numpy(contract.TOP_ITEM_IDS).shape == (1, 5)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_supervisor_restarts_then_gives_up_when_server_keeps_dying(triton_home,
                                                                   tmp_path) -> None:
    add_model(tmp_path, "sup_rerank", contract.GRAPH_RERANK, build_rerank_onnx())
    lines: list[str] = []
    with LocalTritonServer(tmp_path, installation=triton_home) as server:
        url = server.grpc_url
        supervisor = Supervisor(server, RestartPolicy(max_restarts=1, window_seconds=60),
                                log=lines.append, poll_seconds=0.05)
        stop, failure = threading.Event(), []
        thread = threading.Thread(
            target=lambda: failure.append(_run(supervisor, stop)), daemon=True)
        thread.start()
        assert _answers(url)
        first = server.pid
        os.kill(first, signal.SIGSEGV)  # what the upstream crash looked like
        started = time.monotonic()
        _wait(lambda: supervisor.restarts == 1, 60, "the restart")
        restart_seconds = time.monotonic() - started
        assert server.pid != first and server.grpc_url == url  # same ports
        assert _answers(url)
        os.kill(server.pid, signal.SIGKILL)  # a second death within the window: give up
        thread.join(timeout=60)
        stop.set()
    print(f"\n[measure] death -> answering again: {restart_seconds:.2f} s; log: {lines}")
    assert not thread.is_alive()
    assert isinstance(failure[0], TritonServerError)
    assert "died 2 times within 60 s (last: signal SIGKILL); giving up" in str(failure[0])
    assert any("signal SIGSEGV" in line and "restarting" in line for line in lines)


def _run(supervisor: Supervisor, stop: threading.Event) -> BaseException | None:
    try:
        supervisor.run(stop)
    except TritonServerError as error:
        return error
    return None


def test_describe_exit_names_the_signal_when_killed() -> None:
    assert describe_exit(-11) == "signal SIGSEGV"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "unknown exit"


def test_restart_policy_rejects_values_when_not_usable() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError, match="window_seconds"):
        RestartPolicy(window_seconds=0)
