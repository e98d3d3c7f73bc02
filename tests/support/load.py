"""The load generator of the reliability tests and of benchmarks/load_test.py.

Concurrent mixed rerank/retrieve calls over gRPC with `client.aio.AsyncRecommenderClient`;
a ``check_fraction`` sample of the answers is compared with onnxruntime on the exported
graphs. It keeps its own counters of failed calls and the clients' retry statistics, so
nothing a fault causes is swallowed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from client.aio import AsyncRecommenderClient
from client.errors import RecommenderError
from kmr import contract

MAX_USERS_PER_REQUEST = 4
MAX_CANDIDATES_PER_REQUEST = 20
MAX_EXCLUDE_PER_REQUEST = 4
_KEEP_ERRORS = 20

# label -> kind -> onnxruntime session; several labels tell model versions apart.
References = Mapping[str, Mapping[str, Any]]


@dataclass
class LoadResult:
    """What a load run did. Every failed call is counted; none is swallowed.

    Attributes:
        seconds: Wall time of the run.
        concurrency: Workers.
        requests: Requests sent (each one `rerank` or `recommend` call of 1-4 users).
        ok: Requests answered.
        errors: Requests that raised after the client's retries (by error class).
        error_samples: ``(seconds since start, class, message)`` of the first errors.
        checked: Answers compared with onnxruntime.
        matched: Checked answers per reference label (e.g. model version).
        wrong: Checked answers equal to no reference.
        wrong_samples: Descriptions of the first wrong answers.
        timeline: ``(seconds since start, label)`` of every checked answer, by completion.
        latencies_ms: Latency of every answered request.
        client_stats: Per model: the client's calls, retries and failures.
        started: ``time.perf_counter()`` at the origin of ``timeline``.
    """

    seconds: float = 0.0
    concurrency: int = 0
    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[tuple[float, str, str]] = field(default_factory=list)
    checked: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    wrong_samples: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    client_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    started: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        """The figures worth reporting (no per-request lists)."""
        return {
            "seconds": round(self.seconds, 2),
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.error_count,
            "errors_by_class": dict(self.errors),
            "error_samples": self.error_samples[:5],
            "checked": self.checked,
            "matched": dict(self.matched),
            "wrong": self.wrong,
            "throughput_rps": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "latency_ms": {
                "p50": round(self.percentile_ms(50), 2),
                "p90": round(self.percentile_ms(90), 2),
                "p99": round(self.percentile_ms(99), 2),
                "max": round(max(self.latencies_ms, default=float("nan")), 2),
            },
            "client_stats": self.client_stats,
        }


def _match(kind: str, answer: Any, users: np.ndarray, ids: np.ndarray | None,
           references: References) -> str | None:
    from tests.support.served_stack import reference

    for label, sessions in references.items():
        expected = reference(sessions[kind], kind, users, ids)
        k = answer.item_indices.shape[1]
        if np.array_equal(answer.item_indices, expected[contract.TOP_ITEM_IDS][:, :k]) and \
                np.allclose(answer.scores, expected[contract.TOP_SCORES][:, :k], atol=1e-5):
            if kind == contract.GRAPH_RERANK and not np.array_equal(
                    answer.positions, expected[contract.TOP_POSITIONS][:, :k]):
                continue  # distinct candidates: the positions follow from the ids
            return label
    return None


async def _run_async(
    url: str,
    names: Mapping[str, str],
    references: References,
    *,
    seconds: float,
    concurrency: int,
    num_users: int,
    num_items: int,
    check_fraction: float,
    retries: int,
    backoff: float,
    timeout: float,
    stop: threading.Event | None,
    seed: int,
    result: LoadResult,
) -> LoadResult:
    result.concurrency = concurrency
    clients = {kind: AsyncRecommenderClient(url, name, retries=retries, backoff=backoff,
                                            timeout=timeout)
               for kind, name in names.items()}
    kinds = sorted(clients)
    if result.started is None:
        result.started = time.perf_counter()
    start = result.started
    deadline = time.perf_counter() + seconds

    def record_error(error: BaseException) -> None:
        name = type(error).__name__
        result.errors[name] = result.errors.get(name, 0) + 1
        if len(result.error_samples) < _KEEP_ERRORS:
            result.error_samples.append(
                (round(time.perf_counter() - start, 3), name, str(error)[:300]))

    async def worker(index: int) -> None:
        rng = np.random.default_rng(seed * 1000 + index)
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            kind = kinds[int(rng.integers(len(kinds)))]
            batch = int(rng.integers(1, MAX_USERS_PER_REQUEST + 1))
            users = rng.integers(0, num_users, batch).astype(np.int64)
            client = clients[kind]
            result.requests += 1
            began = time.perf_counter()
            try:
                if kind == contract.GRAPH_RERANK:
                    n = int(rng.integers(1, MAX_CANDIDATES_PER_REQUEST + 1))
                    # Distinct candidates per row: duplicates tie, and the order of tied
                    # duplicates depends on the batch the server formed (see docs).
                    ids = np.argsort(rng.random((batch, num_items)), axis=1)[:, :n]
                    answer = await client.rerank(users, ids, raw_ids=False)
                else:
                    m = int(rng.integers(0, MAX_EXCLUDE_PER_REQUEST + 1))
                    ids = rng.integers(0, num_items, (batch, m)).astype(np.int64) if m else None
                    answer = await client.recommend(users, exclude=ids, raw_ids=False)
            except RecommenderError as error:
                record_error(error)
                continue
            result.latencies_ms.append(1000 * (time.perf_counter() - began))
            result.ok += 1
            if rng.random() < check_fraction:
                result.checked += 1
                label = _match(kind, answer, users, ids, references)
                if label is None:
                    result.wrong += 1
                    if len(result.wrong_samples) < _KEEP_ERRORS:
                        sent = None if ids is None else ids.tolist()
                        result.wrong_samples.append(f"{kind} users={users.tolist()} ids={sent}"
                                                    f" -> {answer.item_indices.tolist()}")
                    label = "wrong"
                else:
                    result.matched[label] = result.matched.get(label, 0) + 1
                result.timeline.append((round(time.perf_counter() - start, 3), label))

    try:
        for client in clients.values():  # model facts once, before the clock matters
            try:
                await client.fetch_model_info()
            except RecommenderError:
                pass  # the workers try again (and count the failure) on their first call
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        result.seconds = time.perf_counter() - start
        for kind, client in clients.items():
            result.client_stats[names[kind]] = asdict(client.stats)
            await client.close()
    return result


def run_load(
    url: str,
    names: Mapping[str, str],
    references: References,
    *,
    seconds: float,
    concurrency: int,
    num_users: int,
    num_items: int,
    check_fraction: float = 0.1,
    retries: int = 3,
    backoff: float = 0.1,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
    seed: int = 0,
    live: LoadResult | None = None,
) -> LoadResult:
    """Runs mixed rerank/retrieve load over gRPC (blocking; run it in a thread for faults).

    Args:
        url: gRPC ``host:port``.
        names: Served model name per graph kind (``"rerank"``, ``"retrieve"``).
        references: label -> kind -> onnxruntime session. A checked answer counts for
            the first label whose graph gives exactly that answer, else it is wrong.
        seconds: Run length (``stop`` ends it earlier).
        concurrency: Concurrent workers (one request in flight each).
        num_users: Dense user ids are drawn from [0, num_users).
        num_items: Dense item ids are drawn from [0, num_items).
        check_fraction: Share of answers compared with onnxruntime (1.0: all).
        retries: The clients' retries on UNAVAILABLE.
        backoff: The clients' first retry delay (doubles each retry).
        timeout: Seconds per server call.
        stop: Set it to end the run early.
        seed: Request stream seed.
        live: A `LoadResult` to fill in as the run goes (returned), so another thread can
            watch progress; its ``started``, if set, is the origin of the timeline.
    """
    return asyncio.run(_run_async(
        url, names, references, seconds=seconds, concurrency=concurrency,
        num_users=num_users, num_items=num_items, check_fraction=check_fraction,
        retries=retries, backoff=backoff, timeout=timeout, stop=stop, seed=seed,
        result=live if live is not None else LoadResult()))


class BackgroundLoad:
    """`run_load` in a thread: ``with BackgroundLoad(...) as load: ...; load.result``.

    ``load.live`` is the result being filled; `elapsed` uses the clock of its timeline,
    and `wait_for_answers` waits for traffic instead of guessing with a fixed sleep.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stop = threading.Event()
        kwargs.setdefault("seconds", 3600.0)
        self.live = LoadResult()
        self._args, self._kwargs = args, {**kwargs, "stop": self.stop, "live": self.live}
        self.result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_load(*self._args, **self._kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = error

    def __enter__(self) -> BackgroundLoad:
        self.live.started = time.perf_counter()
        self._thread.start()
        return self

    def elapsed(self) -> float:
        """Seconds since the start, on the clock of ``result.timeline``."""
        assert self.live.started is not None, "use BackgroundLoad as a context manager"
        return time.perf_counter() - self.live.started

    def wait_for_answers(self, count: int = 1, *, timeout: float = 120.0) -> float:
        """Blocks until ``count`` more requests are answered; returns `elapsed` then.

        Raises:
            TimeoutError: Fewer answers within ``timeout`` seconds (with the summary).
            RuntimeError: The load generator stopped (its error is chained).
        """
        target = self.live.ok + count
        deadline = time.monotonic() + timeout
        while self.live.ok < target:
            if not self._thread.is_alive():
                raise RuntimeError(f"the load generator stopped: {self._error!r}") \
                    from self._error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} answers did not come within {timeout:g} s: "
                                   f"{self.live.summary()}")
            time.sleep(0.02)
        return self.elapsed()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=120)
        if self._thread.is_alive():
            raise RuntimeError("the load thread did not stop within 120 s")
        if self._error is not None and exc[0] is None:
            raise RuntimeError(f"the load generator failed: {self._error!r}") from self._error
