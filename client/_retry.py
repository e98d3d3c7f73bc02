"""Retry with exponential backoff, for UNAVAILABLE only.

A server that is restarting or a model being (re)loaded answers UNAVAILABLE; trying
again shortly is safe because inference has no side effects. Any other error (e.g.
INVALID_ARGUMENT) would fail again the same way, so it is raised at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from client.errors import InvalidRequestError, RecommenderError, ServerUnavailableError

T = TypeVar("T")


@dataclass
class ClientStats:
    """Counters of one client (read them from ``client.stats``).

    Attributes:
        calls: Server calls attempted (config fetches and inference chunks, retries
            included).
        retries: Calls repeated after an UNAVAILABLE answer.
        failures: Calls that raised in the end.
    """

    calls: int = 0
    retries: int = 0
    failures: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; the n-th retry waits ``backoff * 2**(n-1)`` seconds."""

    retries: int = 3
    backoff: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidRequestError(
                "Invalid value received for argument `retries`. Expected an int >= 0. "
                f"Received: retries={self.retries!r}"
            )
        if not self.backoff >= 0:
            raise InvalidRequestError(
                "Invalid value received for argument `backoff`. Expected a number >= 0. "
                f"Received: backoff={self.backoff!r}"
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return self.backoff * 2 ** (retry - 1)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    stats: ClientStats,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Calls ``fn``, retrying on `ServerUnavailableError` as ``policy`` allows."""
    for attempt in range(policy.retries + 1):
        stats.calls += 1
        try:
            return fn()
        except ServerUnavailableError:
            if attempt == policy.retries:
                stats.failures += 1
                raise
        except RecommenderError:
            stats.failures += 1
            raise
        stats.retries += 1
        sleep(policy.delay(attempt + 1))
    raise AssertionError("unreachable")


async def call_with_retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    stats: ClientStats,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """The async twin of `call_with_retry`."""
    for attempt in range(policy.retries + 1):
        stats.calls += 1
        try:
            return await fn()
        except ServerUnavailableError:
            if attempt == policy.retries:
                stats.failures += 1
                raise
        except RecommenderError:
            stats.failures += 1
            raise
        stats.retries += 1
        await sleep(policy.delay(attempt + 1))
    raise AssertionError("unreachable")
