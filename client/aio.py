"""`AsyncRecommenderClient`: the asyncio twin of `RecommenderClient` (gRPC).

Validation, encoding, chunking and decoding are the same code as the sync client's;
only the transport (``tritonclient.grpc.aio``) and the awaiting differ. Chunks of one
request are sent concurrently, in an ``asyncio.TaskGroup``: when one chunk fails, the
others are cancelled and the failed chunk's own error is raised (not an ExceptionGroup).

Example:
    >>> import asyncio
    >>> from client.aio import AsyncRecommenderClient
    >>> async def main():
    ...     async with AsyncRecommenderClient("localhost:8001", "mf_retrieve") as client:
    ...         return await client.recommend([0, 1], k=3, raw_ids=False)
    >>> asyncio.run(main()).item_ids.shape  # doctest: +SKIP
    (2, 3)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message

from client._base import VERSION_TRIES, ClientBase, VocabularySource
from client._codec import Plan, Recommendations, RecommendRequest
from client._retry import DEFAULT_JITTER, call_with_retry_async
from client._transport import AsyncGrpcTransport, AsyncTransport, ConnectionOptions
from client.errors import InvalidRequestError, RecommenderError
from client.model_info import ModelInfo

T = TypeVar("T")


class AsyncRecommenderClient(ClientBase):
    """Async client with the same options and methods as `RecommenderClient`.

    Methods that talk to the server are coroutines. ``model_info`` is available once
    `fetch_model_info` (or any request) has run.

    Event loops and threads: the client may be built anywhere (e.g. in sync code before
    ``asyncio.run``); its gRPC channel is made on first use, in the running loop, and
    the client then belongs to that loop: share it freely between the loop's tasks, but
    not with other loops (a clear `RecommenderError`) or threads (asyncio objects are
    not thread-safe). For several threads, use one client per thread and loop, or the
    sync `RecommenderClient` over gRPC.

    Args:
        url: ``host:port`` of the server's gRPC endpoint.
        model_name: The model's name in the repository.
        protocol: Only ``"grpc"``.
        model_version: A version number as str; empty lets the server choose.
        timeout: Seconds allowed per server call.
        retries: Extra attempts when the server answers UNAVAILABLE.
        backoff: Seconds before the first retry; doubles on each further retry.
        jitter: As for `RecommenderClient` (default 0.5).
        deadline: Seconds one server call (the config fetch, or one chunk) may take
            with all its retries and waits; default (None) ``2 * timeout``. An attempt
            in flight is cancelled when it runs out, whatever the transport; then
            `ServerUnavailableError` names the deadline and the attempts.
        vocabularies: As for `RecommenderClient`.
        ssl: Connect with TLS (tritonclient's own; an ``https://`` url implies it).
            Server certificates are verified, host names checked.
        root_certificates: Path of a PEM CA bundle for the server's certificate
            (default: the system's CAs).
        private_key: Path of the client's PEM key, for mutual TLS (with
            ``certificate_chain``).
        certificate_chain: Path of the client's PEM certificate chain, for mutual TLS.
        headers: Headers (gRPC metadata) sent with every request, e.g.
            ``{"authorization": "Bearer ..."}`` for an authenticating proxy.
        transport: Replaces the tritonclient adapter (tests); the TLS options and
            headers are then validated but not used.

    Raises:
        InvalidRequestError: An option is invalid (e.g. a certificate file is missing).

    Example:
        >>> async def top3(url):
        ...     async with AsyncRecommenderClient(url, "mf_rerank") as client:
        ...         return await client.rerank([0], [[1, 2, 3, 4]], k=3, raw_ids=False)
        >>> client = AsyncRecommenderClient("localhost:8001", "mf_retrieve")  # no channel yet
        >>> async def main():
        ...     async with client:  # the channel is made here, in asyncio.run's loop
        ...         return await client.recommend([0], k=2, raw_ids=False)
        >>> asyncio.run(main()).item_ids.shape  # doctest: +SKIP
        (1, 2)
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        protocol: str = "grpc",
        model_version: str = "",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        vocabularies: VocabularySource = None,
        transport: AsyncTransport | None = None,
        ssl: bool = False,
        root_certificates: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        certificate_chain: str | os.PathLike[str] | None = None,
        headers: Mapping[str, str] | None = None,
        jitter: float = DEFAULT_JITTER,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            url,
            model_name,
            model_version=model_version,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            vocabularies=vocabularies,
            jitter=jitter,
            deadline=deadline,
        )
        if protocol != "grpc":
            raise InvalidRequestError(
                "Invalid value received for argument `protocol`. The async client supports "
                f"'grpc' only. Received: protocol={protocol!r}"
            )
        self.protocol = protocol
        self.connection = ConnectionOptions.for_url(
            url,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            headers=headers,
        )
        # Makes no channel yet: AsyncGrpcTransport opens it on first use, in the running loop.
        self._transport = transport or AsyncGrpcTransport(
            url, model_name, model_version, timeout, self.connection
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # Concurrent first requests fetch the config once. (An asyncio.Lock binds to a loop
        # only when first contended, so making it here, outside any loop, is fine.)
        self._config_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the underlying gRPC channel (if one was opened)."""
        await self._transport.close()

    @property
    def model_info(self) -> ModelInfo:
        """The cached model facts; await `fetch_model_info` (or a request) first."""
        if self._info is None:
            raise RecommenderError(
                "Model facts are not fetched yet: `await client.fetch_model_info()` first."
            )
        return self._info

    async def fetch_model_info(self, *, refresh: bool = False) -> ModelInfo:
        """As `RecommenderClient.fetch_model_info`; concurrent callers share one fetch."""
        if self._info is not None and not refresh:
            return self._info
        async with self._config_lock:
            if self._info is None or refresh:
                self._accept_config(await self._call(self._transport.get_config))
        assert self._info is not None
        return self._info

    async def get_model_config(self, *, as_json: bool = True) -> dict[str, Any] | Message:
        """As `RecommenderClient.get_model_config`."""
        return self._format_config(await self._call(self._transport.get_config), as_json)

    async def recommend(
        self,
        user_ids: Any,
        *,
        k: int | None = None,
        exclude: Any = None,
        raw_ids: bool = True,
        nprobe: int | None = None,
        rescore: int | None = None,
    ) -> Recommendations:
        """As `RecommenderClient.recommend`."""
        info = await self.fetch_model_info()
        request = RecommendRequest(user_ids, k, exclude, raw_ids, nprobe, rescore)
        return await self._run(self._plan_recommend(info, request))

    async def rerank(
        self,
        user_ids: Any,
        candidate_item_ids: Any,
        *,
        k: int | None = None,
        raw_ids: bool = True,
    ) -> Recommendations:
        """As `RecommenderClient.rerank`."""
        info = await self.fetch_model_info()
        return await self._run(
            self._plan_rerank(info, user_ids, candidate_item_ids, k, raw_ids)
        )

    async def _run(self, plan: Plan) -> Recommendations:
        """Sends the chunks concurrently; the first failure cancels the others."""
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._answer(plan, i)) for i in range(len(plan.chunks))]
        except BaseExceptionGroup as errors:
            failure = errors.exceptions[0]  # the chunk that failed first
        if failure is not None:
            raise failure  # outside the except block: no ExceptionGroup in its context
        return plan.finish([task.result() for task in tasks])

    async def _answer(self, plan: Plan, index: int) -> tuple[Plan, Mapping[str, Any]]:
        """As `RecommenderClient._answer`: resent if another version's vocabularies encoded it."""
        for _ in range(VERSION_TRIES):
            answer = await self._call(self._transport.infer, plan.chunks[index], plan.outputs)
            again = self._review(plan, answer)
            if again is None:
                return plan, answer
            plan = again
        raise self._version_unsettled(plan)

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await method(*args)`` with retries; our adapters also get the deadline's rest."""
        cut = getattr(self._transport, "accepts_timeout", False) is True

        async def attempt(seconds_left: float | None) -> T:
            if cut and seconds_left is not None:
                return await method(*args, timeout=seconds_left)
            return await method(*args)

        return await call_with_retry_async(attempt, self.retry_policy, self.stats, self._sleep,
                                           clock=self._clock, draw=self._random)
