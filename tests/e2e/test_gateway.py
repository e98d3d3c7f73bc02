"""`kmr-export serve --gateway`: nginx refuses oversized bodies before Triton reads them.

The command runs as a user runs it (a subprocess), on a freshly exported repository
(python backend, dense-index ids, max_batch_size 8, max_candidates 10,000). Through the
gateway, raw tritonclient gRPC and HTTP/JSON requests of the largest legal size are
answered exactly like onnxruntime; requests over the limit are refused (gRPC and
HTTP), and neither the server nor the python stubs grow; good traffic keeps being
answered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.gateway.limits import repository_request_limits
from kmr import contract
from tests.support.load_balancer import require_nginx
from tests.support.served_stack import MAX_BATCH, build_repository, model_names, onnx_session
from tests.support.served_stack import reference as onnx_reference

pytestmark = pytest.mark.triton
INT64_LONGEST = -(2**63) + 1  # the longest int64 in JSON (20 characters)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))


def _family_rss_kb(pid: int) -> dict[int, int]:
    """RSS of the server and of each child (the python-backend stubs)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {p: _rss_kb(p) for p in [pid, *map(int, children)]}


def _rerank_inputs(users: np.ndarray, items: np.ndarray) -> list:
    user = grpcclient.InferInput(contract.USER_ID, list(users.shape), "INT64")
    user.set_data_from_numpy(users)
    cands = grpcclient.InferInput(contract.ITEM_IDS, list(items.shape), "INT64")
    cands.set_data_from_numpy(items)
    return [user, cands]


def _json_body(users: np.ndarray, items: np.ndarray, indent: int | None = None) -> bytes:
    return json.dumps(indent=indent, obj={"inputs": [
        {"name": contract.USER_ID, "shape": list(users.shape), "datatype": "INT64",
         "data": users.reshape(-1).tolist()},
        {"name": contract.ITEM_IDS, "shape": list(items.shape), "datatype": "INT64",
         "data": items.reshape(-1).tolist()},
    ]}).encode()


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (ConnectionError, urllib.error.URLError) as error:  # nginx may close early
        return -1, str(error).encode()


@pytest.fixture(scope="module")
def gateway(triton_home, tmp_path_factory):
    require_nginx()
    root = tmp_path_factory.mktemp("gateway")
    repo, _, version_dirs = build_repository(root)
    grpc_port, http_port = _free_port(), _free_port()
    env = {**os.environ, "KMR_TRITON_HOME": str(triton_home.home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "export", "serve", "--repo", str(repo), "--gateway",
         "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while not any("Ctrl-C" in line for line in lines):
        line = process.stdout.readline()
        assert line or process.poll() is None, f"serve exited: {''.join(lines)}"
        lines.append(line)
        assert time.monotonic() < deadline, f"serve not ready: {''.join(lines)}"
    threading.Thread(target=lambda: [lines.append(x) for x in process.stdout],
                     daemon=True).start()
    server_pid = int(re.search(r"\(pid (\d+)\)", "".join(lines)).group(1))
    yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}",
           "pid": server_pid, "repo": repo, "lines": lines,
           "sessions": {k: onnx_session(d) for k, d in version_dirs.items()}}
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 0, "".join(lines)


def test_serve_prints_gateway_limits_when_started_with_gateway(gateway) -> None:
    limits = repository_request_limits(gateway["repo"])
    text = "".join(gateway["lines"])
    assert f"bodies <= {limits.grpc_bytes:,} bytes" in text
    assert f"bodies <= {limits.http_bytes:,} bytes" in text


def test_gateway_answers_like_onnxruntime_when_request_is_largest_legal(gateway) -> None:
    name = model_names()["rerank"]
    users = np.arange(MAX_BATCH, dtype=np.int64).reshape(-1, 1)
    items = np.full((MAX_BATCH, contract.DEFAULT_MAX_CANDIDATES), INT64_LONGEST, np.int64)
    items[:, :40] = np.arange(40)  # real candidates among unknown, longest-text ids
    expected = onnx_reference(gateway["sessions"]["rerank"], "rerank", users.reshape(-1), items)
    with grpcclient.InferenceServerClient(gateway["grpc"]) as client:
        result = client.infer(name, _rerank_inputs(users, items))
    np.testing.assert_array_equal(result.as_numpy(contract.TOP_ITEM_IDS),
                                  expected[contract.TOP_ITEM_IDS])
    for indent in (None, 2):  # compact and pretty-printed JSON
        body = _json_body(users, items, indent)
        status, answer = _post(f"http://{gateway['http']}/v2/models/{name}/infer", body)
        assert status == 200, (len(body), answer[:300])
        outputs = {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}
        assert outputs[contract.TOP_ITEM_IDS] == \
            expected[contract.TOP_ITEM_IDS].reshape(-1).tolist()


def test_gateway_refuses_before_triton_when_request_is_oversized(gateway) -> None:
    name = model_names()["rerank"]
    users = np.zeros((MAX_BATCH, 1), np.int64)
    items = np.zeros((MAX_BATCH, 200_000), np.int64)  # 12.8 MB, 18x the gRPC limit
    good = threading.Event()
    answered, failed = [], []

    def traffic() -> None:
        with grpcclient.InferenceServerClient(gateway["grpc"]) as client:
            while not good.is_set():
                try:
                    client.infer(name, _rerank_inputs(np.array([[1]]), np.array([[1, 2, 3]])))
                    answered.append(1)
                except InferenceServerException as error:
                    failed.append(str(error))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(0.5)
    before = _family_rss_kb(gateway["pid"])
    for _ in range(3):
        with grpcclient.InferenceServerClient(gateway["grpc"]) as client, \
                pytest.raises(InferenceServerException) as refused:
            client.infer(name, _rerank_inputs(users, items))
        limits = repository_request_limits(gateway["repo"])
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert f"request body over {limits.grpc_bytes} bytes" in refused.value.message()
        status, answer = _post(f"http://{gateway['http']}/v2/models/{name}/infer",
                               _json_body(users, items))
        assert status == 413, answer[:300]
        assert f"request body over {limits.http_bytes} bytes" in json.loads(answer)["error"]
    time.sleep(1.0)
    after = _family_rss_kb(gateway["pid"])
    good.set()
    thread.join(timeout=30)
    assert not failed and len(answered) > 10, failed[:3]
    for pid, kb in before.items():
        assert after.get(pid, kb) <= kb * 1.10 + 1024, (pid, kb, after.get(pid))


def test_serve_refuses_gateway_with_tls_when_both_asked(tmp_path, capsys) -> None:
    from export.cli import main

    (tmp_path / "repo").mkdir()
    for pem in ("a.pem", "b.pem"):
        (tmp_path / pem).write_text("-")
    code = main(["serve", "--repo", str(tmp_path / "repo"), "--gateway", "--grpc-tls-cert",
                 str(tmp_path / "a.pem"), "--grpc-tls-key", str(tmp_path / "b.pem")])
    assert code == 1
    assert "--gateway does not combine with --grpc-tls-*" in capsys.readouterr().err
