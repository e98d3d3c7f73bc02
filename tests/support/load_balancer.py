"""A real nginx in front of Triton replicas: gRPC (HTTP/2, ``grpc_pass``) and HTTP.

`NginxBalancer` runs the product's `export.gateway.nginx.NginxProcess` on free loopback
ports with the replicas as upstreams (and can drain / undrain one). Upstreams use
``max_fails``/``fail_timeout`` and ``grpc_next_upstream``/``proxy_next_upstream``: a
request that cannot reach a replica (connection refused) is passed to the next one.
Requests already sent to a replica that dies are not retried (inference is a POST: nginx
retries non-idempotent requests only with ``non_idempotent``), so those fail and are
what the kill test counts.

nginx comes from Debian packages: ``apt-get install -y nginx-light``. Missing, the
`require_nginx` helper FAILS the test (never skips) with that command.

Example::

    with NginxBalancer(grpc=["127.0.0.1:8001"], http=["127.0.0.1:8000"]) as lb:
        client = tritonclient.grpc.InferenceServerClient(lb.grpc_url)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from export.errors import UserError
from export.gateway import nginx as product_nginx
from export.gateway.nginx import INSTALL_HINT, NginxProcess, NginxSite, find_nginx

__all__ = ["INSTALL_HINT", "NginxBalancer", "find_nginx", "require_nginx"]


def require_nginx() -> str:
    """The nginx binary; fails the calling test (not a skip) when nginx is missing."""
    import pytest

    try:
        return product_nginx.require_nginx()
    except UserError as error:
        pytest.fail(str(error), pytrace=False)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NginxBalancer(NginxProcess):
    """nginx as a child process balancing ``grpc`` and ``http`` replica addresses.

    The product's `NginxProcess` on two free loopback ports; its site follows `down`.
    """

    def __init__(self, grpc: Sequence[str], http: Sequence[str] | None = None, *,
                 workers: int = 1, startup_timeout: float = 10.0) -> None:
        require_nginx()  # fails the test (not a UserError) when nginx is missing
        self.grpc_servers, self.http_servers = list(grpc), list(http or grpc)
        self.workers = workers
        self.grpc_port, self.http_port = _free_ports(2)
        self.down: set[int] = set()
        super().__init__(self._site(), startup_timeout=startup_timeout)

    @property
    def grpc_url(self) -> str:
        """``host:port`` for tritonclient.grpc through nginx."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for tritonclient.http through nginx."""
        return f"127.0.0.1:{self.http_port}"

    def _site(self) -> NginxSite:
        return NginxSite(grpc=self.grpc_servers, http=self.http_servers,
                         grpc_listen=self.grpc_url, http_listen=self.http_url,
                         workers=self.workers, down=frozenset(self.down))

    def _index(self, grpc_url: str) -> int:
        return self.grpc_servers.index(grpc_url)

    def drain(self, grpc_url: str) -> None:
        """Marks the replica ``down`` (gRPC and HTTP): new requests go to the others."""
        self.down.add(self._index(grpc_url))
        self.reload(self._site())

    def undrain(self, grpc_url: str) -> None:
        """Puts a drained replica back into both upstreams."""
        self.down.discard(self._index(grpc_url))
        self.reload(self._site())


class CheckedLoad:
    """Threads sending raw tritonclient gRPC requests through ``url``, each answer checked.

    ``references[version]`` is a list of `export.rollout.canary.CanaryCase` (onnxruntime's
    answers of that version); a thread cycles through the cases and checks each answer
    against the reference of the version that answered
    (``result.get_response().model_version``). Counts: ``ok``, ``wrong``, ``failed``
    (with ``errors`` samples), answers per version, and (time, latency) per success.
    """

    def __init__(self, url: str, model: str, references: dict[str, list], *,
                 threads: int = 4) -> None:
        import threading

        self.url, self.model, self.references, self.threads = url, model, references, threads
        self.cases = next(iter(references.values()))  # the requests (same in every version)
        self.ok = self.wrong = self.failed = 0
        self.by_version: dict[str, int] = {}
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []
        self.failures_at: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                         for i in range(threads)]

    def _record(self, started: float, version: str | None, problem: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            if version is None:
                self.failed += 1
                self.failures_at.append(now)
                if len(self.errors) < 20:
                    self.errors.append(problem or "")
                return
            self.by_version[version] = self.by_version.get(version, 0) + 1
            if problem:
                self.wrong += 1
                self.errors.append(f"wrong v{version}: {problem}")
            else:
                self.ok += 1
                self.latencies.append((now, now - started))

    def _connect(self) -> Any:
        from export.rollout.replica import connect

        return connect(self.url)

    def _ask(self, client: Any, index: int) -> tuple[str, str]:
        """Sends case ``index``; returns (answering version, what is wrong or '')."""
        from export.rollout.canary import answer_mismatch
        from export.rollout.replica import ask

        version, outputs = ask(client, self.model, None, self.cases[index])
        expected = self.references.get(version)
        return version, ("" if expected is None
                         else answer_mismatch(expected[index].expected, outputs))

    def _loop(self, worker: int) -> None:
        client = self._connect()
        count = len(self.cases)
        number = worker
        while not self._stop.is_set():
            index = number % count
            number += 1
            started = time.monotonic()
            try:
                version, problem = self._ask(client, index)
            except Exception as error:  # noqa: BLE001  (every failure is counted)
                self._record(started, None, f"{type(error).__name__}: {error}"[:300])
                continue
            if version not in self.references:
                problem = f"unexpected version {version}"
            self._record(started, version, problem)
        client.close()

    def __enter__(self) -> CheckedLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def snapshot(self) -> dict:
        """Counts so far."""
        with self._lock:
            return {"ok": self.ok, "wrong": self.wrong, "failed": self.failed,
                    "by_version": dict(self.by_version), "errors": list(self.errors[:5])}


class ClientCheckedLoad(CheckedLoad):
    """`CheckedLoad` through the project client (``client.RecommenderClient``, rerank models).

    ``protocol`` is ``"http"`` or ``"grpc"``; the client's own retries are on, as a service
    would run it. Each answer is checked on its leading ``num_results`` slots (ids exactly,
    scores within 1e-4) against the reference of ``Recommendations.model_version``.
    """

    def __init__(self, url: str, model: str, references: dict[str, list], *,
                 threads: int = 2, protocol: str = "http") -> None:
        super().__init__(url, model, references, threads=threads)
        self.protocol = protocol

    def _connect(self) -> Any:
        from client import RecommenderClient

        return RecommenderClient(self.url, self.model, protocol=self.protocol, timeout=10.0)

    def _ask(self, client: Any, index: int) -> tuple[str, str]:
        import numpy as np

        from kmr import contract

        case = self.cases[index]
        answer = client.rerank(case.inputs[contract.USER_ID].reshape(-1),
                               case.inputs[contract.INPUTS[contract.GRAPH_RERANK][1]])
        expected = self.references.get(answer.model_version)
        if expected is None:
            return answer.model_version, ""
        want = expected[index].expected
        count = int(np.asarray(want[contract.NUM_RESULTS]).reshape(-1)[0])
        ids = [int(v) for v in answer.item_ids[0, :count]]
        want_ids = want[contract.TOP_ITEM_IDS][0, :count].tolist()
        if int(answer.num_results[0]) != count or ids != want_ids:
            return answer.model_version, f"ids {ids} (num_results {answer.num_results[0]})"
        if not np.allclose(answer.scores[0, :count], want[contract.TOP_SCORES][0, :count],
                           atol=1e-4, rtol=0):
            return answer.model_version, f"scores {answer.scores[0, :count].tolist()}"
        return answer.model_version, ""
