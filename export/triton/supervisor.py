"""Keeps a local tritonserver answering: restarts it when it dies, gives up when it keeps dying.

Triton 2.51's python backend (the local server) can still be crashed or wedged by some
crafted requests upstream of our ``model.py`` (see docs/reliability.md); a restart takes
about 0.3 s with small models. Production deployments get the same from their
orchestrator (Kubernetes ``restartPolicy: Always`` plus a liveness probe on
``/v2/health/live``); this is that policy for ``kmr-export serve``.

Example:
    >>> policy = RestartPolicy(max_restarts=3, window_seconds=60.0)
    >>> crashes = CrashWindow(policy)
    >>> [crashes.record(now) for now in (0.0, 1.0, 2.0, 3.0)]
    [True, True, True, False]
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from export.triton.local_server import LocalTritonServer, TritonServerError


@dataclass(frozen=True)
class RestartPolicy:
    """How many restarts are allowed within a sliding window before giving up.

    Attributes:
        max_restarts: Restarts allowed within ``window_seconds``.
        window_seconds: The sliding window.
    """

    max_restarts: int = 5
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) \
                or self.max_restarts < 0:
            raise ValueError("Invalid value received for argument `max_restarts`. Expected an "
                             f"int >= 0. Received: max_restarts={self.max_restarts!r}")
        if not self.window_seconds > 0:
            raise ValueError("Invalid value received for argument `window_seconds`. Expected "
                             f"a positive number. Received: window_seconds={self.window_seconds!r}")


@dataclass
class CrashWindow:
    """The crash times within the policy's window; `record` says whether to restart."""

    policy: RestartPolicy
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Records a crash at ``now``; True while restarts stay within the policy."""
        self.times.append(now)
        while self.times and now - self.times[0] > self.policy.window_seconds:
            self.times.popleft()
        return len(self.times) <= self.policy.max_restarts


def describe_exit(code: int | None) -> str:
    """``'signal SIGSEGV'`` / ``'exit code 1'`` for a process exit status."""
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Runs ``server`` until ``stop`` is set, restarting it when it exits on its own.

    Attributes:
        restarts: How many restarts were made.
    """

    def __init__(self, server: LocalTritonServer, policy: RestartPolicy | None = None, *,
                 log: Callable[[str], None] = print, poll_seconds: float = 0.2) -> None:
        self.server = server
        self.policy = policy or RestartPolicy()
        self.restarts = 0
        self._crashes = CrashWindow(self.policy)
        self._log = log
        self._poll_seconds = poll_seconds

    def run(self, stop: threading.Event) -> None:
        """Watches the (started) server; returns when ``stop`` is set.

        Raises:
            TritonServerError: The server died more than ``max_restarts`` times within
                ``window_seconds``, or could not be restarted; the message has the
                last exit status and the tail of the server's log.
        """
        while not stop.wait(self._poll_seconds):
            if self.server.is_running():
                continue
            why = describe_exit(self.server.exit_code)
            tail = self.server.log_text()[-2000:]
            if not self._crashes.record(time.monotonic()):
                raise TritonServerError(
                    f"tritonserver died {len(self._crashes.times)} times within "
                    f"{self.policy.window_seconds:g} s (last: {why}); giving up.\n{tail}")
            self._log(f"tritonserver died ({why}); restarting "
                      f"(restart {self.restarts + 1}, at most {self.policy.max_restarts} "
                      f"per {self.policy.window_seconds:g} s)")
            self.server.stop()  # reaps stubs, removes the dead server's shared memory
            started = time.monotonic()
            self.server.start()
            self.server.wait_until_ready()
            self.restarts += 1
            self._log(f"tritonserver ready again in {time.monotonic() - started:.2f} s "
                      f"(pid {self.server.pid}, {self.restarts} restarts so far)")
