"""Retries for UNAVAILABLE only, with jittered exponential backoff and a deadline per call.

A server that is restarting or a model being (re)loaded answers UNAVAILABLE; trying
again shortly is safe because inference has no side effects. Any other error (e.g.
INVALID_ARGUMENT) would fail again the same way, so it is raised at once.

Jitter: the n-th retry waits ``backoff * 2**(n-1)``, shortened by a random share of up to
``jitter`` of itself (default 0.5: "equal jitter", a wait in [base / 2, base]), so that
clients cut off by the same outage do not all come back at the same instant. Waits are
never longer than without jitter.

Deadline: one call (a config fetch or one chunk of a batch) including all its retries
and waits gets at most ``deadline`` seconds (the clients' default: ``2 * timeout``, i.e.
20 s with the default 10 s timeout, instead of up to ~40 s = 4 attempts x 10 s + 0.7 s
of backoff). A retry whose wait would end past the deadline is not made; an attempt in
flight is cut to the time left (async: always; sync: over gRPC). Either way
`ServerUnavailableError` names the deadline and the attempts made.

`call_with_retry` and `call_with_retry_async` are thin loops over one `RetrySchedule`,
which holds every decision (retry or not, how long to wait, deadline reached), so both
paths behave alike. Time, sleep and the random source are injectable for tests.

Example:
    >>> policy = RetryPolicy(retries=2, backoff=0.1, jitter=0.5, deadline=5.0)
    >>> [policy.delay(n) for n in (1, 2)], policy.delay(2, draw=1.0)
    ([0.1, 0.2], 0.1)
    >>> stats = ClientStats()
    >>> call_with_retry(lambda seconds_left: "ok", policy, stats), stats.calls
    ('ok', 1)
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from client.errors import InvalidRequestError, RecommenderError, ServerUnavailableError

T = TypeVar("T")

DEFAULT_JITTER = 0.5
"""Default share of each backoff wait that is randomised away (equal jitter)."""

DEADLINE_PER_TIMEOUT = 2.0
"""The clients' default deadline is this many times their ``timeout``."""

# An attempt that timed out with (almost) nothing left before the deadline was cut short
# by the deadline, not by the server: it is reported as the deadline.
_TIMEOUT_STATUSES = frozenset({"StatusCode.DEADLINE_EXCEEDED", "timeout"})
_SLACK = 0.005  # seconds: clock granularity between the transport's timer and ours


@dataclass
class ClientStats:
    """Counters of one client (read them from ``client.stats``).

    Safe to update from several threads: the clients count through `record`, which holds
    a lock; `snapshot` reads the three counters consistently. Plain attribute reads are
    fine for one counter at a time.

    Attributes:
        calls: Server calls attempted (config fetches and inference chunks, retries
            included).
        retries: Calls repeated after an UNAVAILABLE answer.
        failures: Calls that raised in the end.
        unknown_exclusions: Exclusion ids dropped before sending because the loaded
            item vocabulary does not know them (raw-id models with ``vocabularies=``).
        version_resends: Chunks sent again because a version other than the one whose
            vocabulary encoded them answered (dense-index models with vocabularies).

    Example:
        >>> stats = ClientStats()
        >>> stats.record(calls=2, retries=1)
        >>> stats.snapshot()
        ClientStats(calls=2, retries=1, failures=0, unknown_exclusions=0, version_resends=0)
    """

    calls: int = 0
    retries: int = 0
    failures: int = 0
    unknown_exclusions: int = 0
    version_resends: int = 0

    def __post_init__(self) -> None:
        # Not a dataclass field: asdict(), replace(), ==, and repr() see the counters only.
        self._lock = threading.Lock()

    def record(self, **counts: int) -> None:
        """Adds to the named counters atomically (with respect to other `record` calls).

        Raises:
            TypeError: a name is not a counter.
        """
        unknown = set(counts) - set(_COUNTERS)
        if unknown:
            raise TypeError(f"ClientStats has no counter(s) {sorted(unknown)}.")
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def snapshot(self) -> ClientStats:
        """A consistent copy of the counters, taken under the lock."""
        with self._lock:
            return ClientStats(**self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:  # for copy.copy / deepcopy: locks are not copied
        return {name: getattr(self, name) for name in _COUNTERS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


_COUNTERS = ("calls", "retries", "failures", "unknown_exclusions", "version_resends")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetryPolicy:
    """How one server call is retried.

    Args:
        retries: Extra attempts after an UNAVAILABLE answer.
        backoff: Seconds before the first retry; the n-th retry waits
            ``backoff * 2**(n-1)`` before jitter.
        jitter: Share (0..1) of each wait that may be randomised away: the wait is
            ``base * (1 - jitter * u)`` with ``u`` uniform in [0, 1). 0 turns jitter off.
        deadline: Seconds one call may take, retries and waits included; None (or
            ``math.inf``) for no bound. The clients pass ``2 * timeout`` unless given one.

    Raises:
        InvalidRequestError: A value is out of range.
    """

    retries: int = 3
    backoff: float = 0.1
    jitter: float = field(default=DEFAULT_JITTER, kw_only=True)
    deadline: float | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidRequestError(
                "Invalid value received for argument `retries`. Expected an int >= 0. "
                f"Received: retries={self.retries!r}"
            )
        if not (_is_number(self.backoff) and self.backoff >= 0):
            raise InvalidRequestError(
                "Invalid value received for argument `backoff`. Expected a number >= 0. "
                f"Received: backoff={self.backoff!r}"
            )
        if not (_is_number(self.jitter) and 0 <= self.jitter <= 1):
            raise InvalidRequestError(
                "Invalid value received for argument `jitter`. Expected a number in [0, 1]. "
                f"Received: jitter={self.jitter!r}"
            )
        if self.deadline is not None and not (_is_number(self.deadline) and self.deadline > 0):
            raise InvalidRequestError(
                "Invalid value received for argument `deadline`. Expected seconds > 0 (or "
                f"None for no deadline). Received: deadline={self.deadline!r}"
            )

    @property
    def bounded(self) -> bool:
        """True when calls have a finite deadline."""
        return self.deadline is not None and not math.isinf(self.deadline)

    def delay(self, retry: int, draw: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry`` (1-based).

        ``draw`` in [0, 1) is the random share (0: the full exponential wait).
        """
        return self.backoff * 2 ** (retry - 1) * (1.0 - self.jitter * draw)


class RetrySchedule:
    """The decisions of one call with retries; no I/O, so sync and async share it.

    Use: `begin` before each attempt (it counts the attempt and returns the seconds left
    before the deadline, or None), then `after_failure` with the error of a failed
    attempt: it returns the seconds to wait before the next attempt, or raises (the error
    itself, or a `ServerUnavailableError` naming the deadline).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        stats: ClientStats,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.stats = stats
        self._clock = clock
        self._draw = draw
        self._started = clock()
        self.attempts = 0
        self._last: BaseException | None = None

    def elapsed(self) -> float:
        """Seconds since the schedule was made (the call began)."""
        return self._clock() - self._started

    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once past it); None: no deadline."""
        if not self.policy.bounded:
            return None
        assert self.policy.deadline is not None
        return self.policy.deadline - self.elapsed()

    def begin(self) -> float | None:
        """Counts an attempt; returns the seconds it may take (None: no deadline).

        Raises:
            ServerUnavailableError: The deadline has already passed (after a wait).
        """
        left = self.remaining()
        if left is not None and left <= 0 and self._last is not None:
            self._fail(self.deadline_error(self._last))
        self.attempts += 1
        self.stats.record(calls=1)
        return left

    def after_failure(self, error: BaseException) -> float:
        """Returns the wait before the next attempt, or raises the call's final error."""
        self._last = error
        left = self.remaining()
        if isinstance(error, ServerUnavailableError):
            if self.attempts > self.policy.retries:
                self._fail(error)
            delay = self.policy.delay(self.attempts, self._draw())
            if left is not None and delay >= left:
                self._fail(self.deadline_error(error))
            self.stats.record(retries=1)
            return delay
        timed_out = isinstance(error, RecommenderError) and error.status in _TIMEOUT_STATUSES
        if timed_out and left is not None and left <= _SLACK:
            self.out_of_time(error)  # the attempt's timeout had been cut to the deadline
        self._fail(error)

    def out_of_time(self, error: BaseException) -> NoReturn:
        """Raises the deadline error for an attempt stopped by the deadline."""
        self._last = error
        self._fail(self.deadline_error(error))

    def deadline_error(self, last: BaseException) -> ServerUnavailableError:
        """The error that says the deadline ran out, naming it, the attempts and ``last``."""
        status = last.status if isinstance(last, RecommenderError) and last.status else None
        error = ServerUnavailableError(
            f"Gave up after {self.attempts} attempt(s) in {self.elapsed():.2f} s: the "
            f"call's deadline of {self.policy.deadline:g} s ran out. Last error: "
            f"{str(last) or type(last).__name__}",
            status=status or "deadline",
        )
        error.__cause__ = last
        return error

    def _fail(self, error: BaseException) -> NoReturn:
        self.stats.record(failures=1)
        raise error


def call_with_retry(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    stats: ClientStats,
    sleep: Callable[[float], None] = time.sleep,
    *,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
) -> T:
    """Calls ``attempt(seconds_left)``, retrying on `ServerUnavailableError` as ``policy`` allows.

    ``seconds_left`` is the time before the deadline (None without one): pass it on as
    the attempt's timeout so that the attempt in flight cannot outlive the deadline.

    Raises:
        RecommenderError: The last attempt's error, or a `ServerUnavailableError` naming
            the deadline when it ran out first.
    """
    schedule = RetrySchedule(policy, stats, clock=clock, draw=draw)
    while True:
        seconds_left = schedule.begin()
        try:
            return attempt(seconds_left)
        except RecommenderError as error:
            delay = schedule.after_failure(error)
        sleep(delay)


async def call_with_retry_async(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    stats: ClientStats,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
) -> T:
    """The async twin of `call_with_retry`; an attempt in flight is also cancelled when
    the deadline runs out (``asyncio.timeout``), whatever the transport."""
    schedule = RetrySchedule(policy, stats, clock=clock, draw=draw)
    while True:
        seconds_left = schedule.begin()
        guard = asyncio.timeout(None if seconds_left is None else max(0.0, seconds_left))
        try:
            async with guard:
                return await attempt(seconds_left)
        except TimeoutError as error:
            if not guard.expired():
                raise  # not ours: a transport that lets a bare TimeoutError escape
            schedule.out_of_time(error)
        except RecommenderError as error:
            delay = schedule.after_failure(error)
        await sleep(delay)
