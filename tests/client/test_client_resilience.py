"""Unit tests of the clients' behaviour under failure and concurrency (no server).

Event loops (the async client's lazy channel), threads (shared clients, `ClientStats`),
retries (jitter, the deadline per call, one schedule for sync and async), cancelling
sibling chunks, and `ModelAdmin.wait_until_ready` raising what waiting cannot fix. Time,
sleep and randomness are injected, so nothing here waits for real except where a test
says so (a few tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import pickle
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from client import (
    AsyncRecommenderClient,
    AuthenticationError,
    ClientStats,
    InferenceError,
    InvalidRequestError,
    ModelAdmin,
    ModelNotFoundError,
    RecommenderClient,
    RecommenderError,
    RetryPolicy,
    ServerUnavailableError,
    TlsHandshakeError,
)
from client._retry import call_with_retry, call_with_retry_async
from client._transport import GrpcTransport, to_client_error
from kmr import contract
from tests.client.test_client_unit import (
    AsyncFakeTransport,
    FakeTransport,
    config_message,
    grpc_json,
    make_client,
)


def _unavailable(text: str = "connection refused") -> ServerUnavailableError:
    return to_client_error(InferenceServerException(text, status="StatusCode.UNAVAILABLE"),
                           "infer")


def _free_port() -> int:
    with socket.socket() as sock:  # free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeClock:
    """A monotonic clock that only moves when told (sleeps and slow attempts move it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


# -- 1. event loops and threads ---------------------------------------------------------------
def test_async_client_reports_unavailable_not_loop_error_when_built_outside_the_loop() -> None:
    client = AsyncRecommenderClient(f"127.0.0.1:{_free_port()}", "mf", timeout=2.0, retries=0)

    async def main() -> BaseException:
        async with client:
            with pytest.raises(RecommenderError) as info:
                await client.fetch_model_info()
            return info.value

    error = asyncio.run(main())  # a real grpc.aio channel: made inside asyncio.run's loop
    assert type(error) is ServerUnavailableError, error
    assert "different loop" not in str(error)


def test_async_client_raises_clear_error_when_used_from_a_second_event_loop() -> None:
    client = AsyncRecommenderClient(f"127.0.0.1:{_free_port()}", "mf", timeout=2.0, retries=0)

    async def fetch() -> BaseException:
        with pytest.raises(RecommenderError) as info:
            await client.fetch_model_info()
        return info.value

    assert type(asyncio.run(fetch())) is ServerUnavailableError
    calls = client.stats.calls
    second = asyncio.run(fetch())
    assert type(second) is RecommenderError
    assert "first used in another event loop" in str(second)
    assert "one client per event loop" in str(second)
    assert client.stats.failures == 2 and client.stats.calls == calls + 1


def test_async_client_opens_no_channel_when_closed_before_use(monkeypatch) -> None:
    made: list[Any] = []
    monkeypatch.setattr(aioclient, "InferenceServerClient",
                        lambda *args, **kwargs: made.append(args))
    client = AsyncRecommenderClient("h:1", "mf")

    async def main() -> None:
        await client.close()
        with pytest.raises(RecommenderError, match="the async client is closed"):
            await client.fetch_model_info()

    asyncio.run(main())
    assert made == []


def test_client_fetches_config_once_when_threads_send_first_requests_together() -> None:
    threads = 6
    started = threading.Barrier(threads)

    class SlowConfig(FakeTransport):
        def get_config(self) -> dict[str, Any]:
            time.sleep(0.05)  # a round trip: the other threads' first requests arrive meanwhile
            return super().get_config()

    transport = SlowConfig(grpc_json(config_message(contract.GRAPH_RETRIEVE)),
                           contract.GRAPH_RETRIEVE)
    client = RecommenderClient("fake:0", "mf_retrieve", transport=transport)
    results: list[Any] = []

    def first_request(user: int) -> None:
        started.wait()
        results.append(client.recommend([user % 4], k=2, raw_ids=False))

    workers = [threading.Thread(target=first_request, args=(u,)) for u in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == threads
    assert transport.config_calls == 1
    assert client.stats.calls == 1 + threads


def test_client_stats_update_waits_for_the_lock_when_another_thread_holds_it() -> None:
    stats = ClientStats()
    policy = RetryPolicy(retries=0)
    worker = threading.Thread(target=call_with_retry, args=(lambda left: None, policy, stats))
    with stats._lock:  # a reader holding the lock, e.g. in snapshot()
        worker.start()
        worker.join(timeout=0.2)
        assert worker.is_alive(), "the call counted without taking the stats lock"
        assert stats.calls == 0
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert stats.snapshot() == ClientStats(calls=1, retries=0, failures=0)


def test_client_stats_stay_copyable_when_they_hold_a_lock() -> None:
    stats = ClientStats()
    stats.record(calls=3, retries=2, failures=1)
    assert dataclasses.asdict(stats) == {"calls": 3, "retries": 2, "failures": 1,
                                         "unknown_exclusions": 0, "version_resends": 0}
    for clone in (copy.copy(stats), copy.deepcopy(stats), pickle.loads(pickle.dumps(stats))):
        assert clone == stats and clone._lock is not stats._lock
        clone.record(calls=1)
        assert (clone.calls, stats.calls) == (4, 3)
    assert repr(stats) == ("ClientStats(calls=3, retries=2, failures=1, unknown_exclusions=0, "
                           "version_resends=0)")
    with pytest.raises(TypeError, match="no counter"):
        stats.record(call=1)


# -- 2. retries: jitter and the deadline --------------------------------------------------------
def _failing(errors: list[BaseException]) -> Any:
    def attempt(seconds_left: float | None) -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    return attempt


def test_retry_waits_follow_the_random_source_when_jitter_is_set() -> None:
    draws = iter([0.0, 1.0, 0.5])
    clock = FakeClock()
    result = call_with_retry(_failing([_unavailable() for _ in range(3)]),
                             RetryPolicy(retries=3, backoff=0.1, jitter=0.5), ClientStats(),
                             clock.sleep, clock=clock, draw=lambda: next(draws))
    assert result == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2 * 0.5, 0.4 * 0.75])


def test_client_retry_waits_are_between_half_and_full_backoff_when_jitter_is_default(
    rerank_client,
) -> None:
    client, transport = rerank_client
    client._random = random.Random(11).random
    sleeps: list[float] = []
    client._sleep = sleeps.append
    transport.failures = [_unavailable() for _ in range(10)]
    with pytest.raises(ServerUnavailableError, match="connection refused"):
        client.rerank([0], [[1]], raw_ids=False)
    bases = [0.1, 0.2, 0.4]
    assert len(sleeps) == 3
    assert all(base / 2 <= wait <= base for wait, base in zip(sleeps, bases, strict=True))
    assert sleeps != bases  # jittered


@pytest.fixture()
def rerank_client() -> tuple[RecommenderClient, FakeTransport]:
    client, transport = make_client(contract.GRAPH_RERANK)
    client.fetch_model_info()
    return client, transport


def test_client_deadline_defaults_to_twice_the_timeout_when_not_given() -> None:
    transport = FakeTransport({}, contract.GRAPH_RERANK)
    assert RecommenderClient("h:1", "m", timeout=3, transport=transport).retry_policy == \
        RetryPolicy(retries=3, backoff=0.1, jitter=0.5, deadline=6.0)
    assert AsyncRecommenderClient("h:1", "m", deadline=1.5).retry_policy.deadline == 1.5
    unbounded = RecommenderClient("h:1", "m", deadline=math.inf, transport=transport)
    assert not unbounded.retry_policy.bounded
    assert RetryPolicy().deadline is None and not RetryPolicy().bounded


class SlowUnavailable(FakeTransport):
    """Each infer takes 8 (fake) seconds, cut to the ``timeout`` it is given, then fails."""

    accepts_timeout = True

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(grpc_json(config_message(contract.GRAPH_RERANK)), contract.GRAPH_RERANK)
        self.clock = clock
        self.timeouts: list[float | None] = []

    def get_config(self, *, timeout: float | None = None) -> dict[str, Any]:
        return super().get_config()

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], *,
              timeout: float | None = None) -> dict:
        self.timeouts.append(timeout)
        if timeout is not None and timeout < 8:
            self.clock.now += timeout
            raise to_client_error(InferenceServerException(
                "Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), "infer")
        self.clock.now += 8
        raise _unavailable("the model is reloading")


def test_call_raises_unavailable_naming_deadline_when_retries_would_outlast_it() -> None:
    clock = FakeClock()
    transport = SlowUnavailable(clock)
    client = RecommenderClient("fake:0", "mf_rerank", transport=transport, timeout=10.0)
    client._sleep, client._clock, client._random = clock.sleep, clock, lambda: 0.0
    client.fetch_model_info()
    with pytest.raises(ServerUnavailableError) as info:
        client.rerank([0], [[1]], raw_ids=False)
    message = str(info.value)
    assert "deadline of 20 s ran out" in message and "after 3 attempt(s)" in message
    assert "Deadline Exceeded" in message  # the last attempt, cut to the deadline's rest
    assert isinstance(info.value.__cause__, InferenceError)
    assert clock.now == pytest.approx(20.0)  # not 4 x 8 + 0.7 s: the deadline bounds the call
    assert transport.timeouts == pytest.approx([20.0, 11.9, 3.7])
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    assert (client.stats.calls, client.stats.retries, client.stats.failures) == (4, 2, 1)


def test_call_stops_before_a_wait_that_would_end_past_the_deadline() -> None:
    clock = FakeClock()
    errors: list[BaseException] = [_unavailable() for _ in range(5)]

    def attempt(seconds_left: float | None) -> str:
        clock.now += 1.0
        return _failing(errors)(seconds_left)

    stats = ClientStats()
    policy = RetryPolicy(retries=5, backoff=1.0, jitter=0.0, deadline=6.5)
    with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\) in 6\.00 s: the "
                       r"call's deadline of 6\.5 s ran out") as info:
        call_with_retry(attempt, policy, stats, clock.sleep, clock=clock)
    assert clock.sleeps == [1.0, 2.0]  # the next wait (4 s) would end past 6.5 s: not taken
    assert info.value.status == "StatusCode.UNAVAILABLE"
    assert (stats.calls, stats.retries, stats.failures) == (3, 2, 1)


def test_async_call_is_cancelled_at_the_deadline_when_an_attempt_hangs() -> None:
    cancelled: list[bool] = []

    class Hanging(AsyncFakeTransport):
        async def infer(self, inputs, outputs):  # type: ignore[override]
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    transport = Hanging(grpc_json(config_message(contract.GRAPH_RERANK)), contract.GRAPH_RERANK)

    async def main() -> tuple[BaseException, float]:
        async with AsyncRecommenderClient("fake:0", "mf_rerank", transport=transport,
                                          timeout=10.0, deadline=0.05) as client:
            await client.fetch_model_info()
            started = time.monotonic()
            with pytest.raises(ServerUnavailableError) as info:
                await client.rerank([0], [[1]], raw_ids=False)
            return info.value, time.monotonic() - started

    error, seconds = asyncio.run(main())
    assert seconds < 5
    assert "deadline of 0.05 s ran out" in str(error) and "1 attempt(s)" in str(error)
    assert error.status == "deadline" and cancelled == [True]


def test_grpc_transport_cuts_its_timeout_to_the_deadline_rest_when_given() -> None:
    seen: list[float] = []

    class Recording:
        def get_model_config(self, *args: Any, client_timeout: float, **kwargs: Any) -> dict:
            seen.append(client_timeout)
            return {}

        def close(self) -> None:
            pass

    transport = GrpcTransport("127.0.0.1:1", "mf", "", 10.0)
    transport.close()
    transport._client = Recording()
    transport.get_config()
    transport.get_config(timeout=3.5)
    transport.get_config(timeout=30.0)
    assert seen == [10.0, 3.5, 10.0]
    assert transport.accepts_timeout is True


def test_sync_and_async_retries_follow_one_schedule_when_failures_match() -> None:
    def run_sync() -> tuple[list[float], ClientStats, BaseException]:
        clock, stats = FakeClock(), ClientStats()
        draws = iter([0.3, 0.9, 0.1, 0.6])
        with pytest.raises(ServerUnavailableError) as info:
            call_with_retry(_failing([_unavailable() for _ in range(9)]),
                            RetryPolicy(retries=3, deadline=0.6), stats, clock.sleep,
                            clock=clock, draw=lambda: next(draws))
        return clock.sleeps, stats, info.value

    def run_async() -> tuple[list[float], ClientStats, BaseException]:
        clock, stats = FakeClock(), ClientStats()
        draws = iter([0.3, 0.9, 0.1, 0.6])
        errors = [_unavailable() for _ in range(9)]

        async def attempt(seconds_left: float | None) -> str:
            return _failing(errors)(seconds_left)

        async def main() -> BaseException:
            with pytest.raises(ServerUnavailableError) as info:
                await call_with_retry_async(attempt, RetryPolicy(retries=3, deadline=0.6),
                                            stats, clock.async_sleep, clock=clock,
                                            draw=lambda: next(draws))
            return info.value

        return clock.sleeps, stats, asyncio.run(main())

    sync_sleeps, sync_stats, sync_error = run_sync()
    async_sleeps, async_stats, async_error = run_async()
    assert sync_sleeps == async_sleeps == pytest.approx([0.1 * 0.85, 0.2 * 0.55, 0.4 * 0.95])
    assert sync_stats == async_stats == ClientStats(calls=4, retries=3, failures=1)
    assert str(sync_error) == str(async_error) == "infer: connection refused"


# -- 3. concurrent chunks -----------------------------------------------------------------------
def test_async_client_cancels_sibling_chunks_and_raises_original_error_when_one_fails() -> None:
    boom = to_client_error(InferenceServerException("bad chunk",
                                                    status="StatusCode.INVALID_ARGUMENT"),
                           "infer")
    cancelled: list[int] = []

    class OneChunkFails(AsyncFakeTransport):
        async def infer(self, inputs, outputs):  # type: ignore[override]
            first_user = int(inputs[contract.USER_ID].reshape(-1)[0])
            if first_user == 2:
                await asyncio.sleep(0)
                raise boom
            try:
                await asyncio.sleep(30)  # a slow chunk: must not outlive the failed request
            except asyncio.CancelledError:
                cancelled.append(first_user)
                raise
            return await super().infer(inputs, outputs)

    config = grpc_json(config_message(contract.GRAPH_RETRIEVE, max_batch_size=2))
    transport = OneChunkFails(config, contract.GRAPH_RETRIEVE)

    async def main() -> BaseException:
        async with AsyncRecommenderClient("fake:0", "mf_retrieve", transport=transport) as c:
            await c.fetch_model_info()
            with pytest.raises(InferenceError) as info:
                await c.recommend([0, 1, 2, 3, 0, 1], k=2, raw_ids=False)
            assert sorted(cancelled) == [0, 0]  # chunks [0, 1] and [0, 1]; [2, 3] failed
            return info.value

    started = time.monotonic()
    error = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert error is boom and not isinstance(error, BaseExceptionGroup)
    assert not isinstance(error.__context__, BaseExceptionGroup)
    assert error.status == "StatusCode.INVALID_ARGUMENT"


# -- 4. ModelAdmin.wait_until_ready -------------------------------------------------------------
class FakeAdminClient:
    """Stands in for tritonclient's gRPC client: ``is_model_ready`` answers from a script."""

    def __init__(self, answers: list[bool | Exception]) -> None:
        self.answers = answers
        self.polls = 0

    def is_model_ready(self, model_name: str, version: str = "", **kwargs: Any) -> bool:
        self.polls += 1
        answer = self.answers[min(self.polls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_model_repository_index(self, **kwargs: Any) -> dict[str, Any]:
        return {"models": [{"name": "mf", "version": "1", "state": "UNAVAILABLE",
                            "reason": "loading"}]}

    def close(self) -> None:
        pass


def _admin(answers: list[bool | Exception]) -> tuple[ModelAdmin, FakeAdminClient]:
    admin = ModelAdmin("127.0.0.1:1", timeout=1.0)
    admin.close()
    fake = FakeAdminClient(answers)
    admin._client = fake
    return admin, fake


@pytest.mark.parametrize(
    "error, expected",
    [
        (InferenceServerException("missing token", status="StatusCode.UNAUTHENTICATED"),
         AuthenticationError),
        (InferenceServerException("no", status="StatusCode.PERMISSION_DENIED"),
         AuthenticationError),
        (InferenceServerException("This protocol is restricted, expecting header "
                                  "'triton-grpc-protocol-k'", status="StatusCode.UNAVAILABLE"),
         AuthenticationError),
        (InferenceServerException("failed to connect to all addresses; last error: "
                                  "UNAVAILABLE: ipv4:127.0.0.1:8001: Ssl handshake failed: "
                                  "CERTIFICATE_VERIFY_FAILED", status="StatusCode.UNAVAILABLE"),
         TlsHandshakeError),
    ],
)
def test_wait_until_ready_raises_at_once_when_waiting_cannot_fix_the_error(
    error, expected
) -> None:
    admin, fake = _admin([error])
    started = time.monotonic()
    with pytest.raises(expected) as info:
        admin.wait_until_ready("mf", timeout=2.0, interval=0.01)
    assert time.monotonic() - started < 1.0 and fake.polls == 1
    assert info.value.__cause__ is error
    assert isinstance(info.value, RecommenderError)


def test_wait_until_ready_keeps_polling_when_server_is_unavailable_then_ready() -> None:
    admin, fake = _admin([InferenceServerException("down", status="StatusCode.UNAVAILABLE"),
                          InferenceServerException("restarting", status="StatusCode.UNAVAILABLE"),
                          False, True])
    assert admin.wait_until_ready("mf", timeout=5.0, interval=0.001) < 5.0
    assert fake.polls == 4


def test_wait_until_ready_names_state_and_last_error_when_timeout_passes() -> None:
    admin, _ = _admin([InferenceServerException("connection refused",
                                                status="StatusCode.UNAVAILABLE")])
    with pytest.raises(ModelNotFoundError) as info:
        admin.wait_until_ready("mf", version="1", timeout=0.05, interval=0.01)
    message = str(info.value)
    assert "Model 'mf' version 1 not ready after 0.05 s" in message
    assert "1: UNAVAILABLE loading" in message
    assert "Last polling error: model 'mf' ready: connection refused" in message


def test_wait_until_ready_raises_invalid_request_when_version_is_not_a_str() -> None:
    admin, fake = _admin([True])
    with pytest.raises(InvalidRequestError, match="Received: version=2"):
        admin.wait_until_ready("mf", version=2, timeout=1.0)  # type: ignore[arg-type]
    assert fake.polls == 0


@pytest.fixture()
def http_status_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A local HTTP server answering GET .../ready with the status set in the dict."""
    answer = {"status": 401}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            body = json.dumps({"error": f"refused by the proxy ({answer['status']})"}).encode()
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [401, 403])
def test_wait_until_ready_raises_authentication_error_at_once_when_http_refuses(
    http_status_server, status
) -> None:
    url, answer = http_status_server
    answer["status"] = status
    with ModelAdmin(url, protocol="http", timeout=2.0) as admin:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            admin.wait_until_ready("mf", timeout=2.0, interval=0.01)
        assert time.monotonic() - started < 1.0
    assert info.value.status == str(status)
    assert f"refused by the proxy ({status})" in str(info.value)


def test_http_is_model_ready_is_false_when_model_is_not_ready(http_status_server) -> None:
    url, answer = http_status_server
    with ModelAdmin(url, protocol="http", timeout=2.0) as admin:
        answer["status"] = 400
        assert admin.is_model_ready("mf") is False
        answer["status"] = 200
        assert admin.is_model_ready("mf", "3") is True
