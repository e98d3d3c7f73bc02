"""Rollout and rollback of a model version across Triton replicas, one replica at a time.

Every replica runs with explicit model control on the same repository (a shared folder or
object storage). For each replica in turn: load version N through the repository API,
wait until that replica serves it, check it with canary requests whose expected answers
come from onnxruntime on the local copy of the version; on a failed load or a wrong
answer, put that replica back on the version it served before and STOP, so the replicas
not reached yet keep serving the old version.

With an ``s3://`` repository the version must be complete on the store (refused before
any replica is touched otherwise); the canary's copy is downloaded and checked against
the version's marker; and once every replica serves it, the store's config is pinned to
it, so replicas restarted later load it too (`export.storage.serving`).

Example (needs running replicas)::

    report = rollout(["10.0.0.1:8001", "10.0.0.2:8001"], "ro", 2, repo="model_repository")
    print(report.summary())
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.errors import ExportError
from export.rollout import replica as rep
from export.rollout.canary import DEFAULT_CASES, CanaryCase, canary_cases, version_dir
from export.storage import download_version, find_complete_versions, pin_serving_version
from export.storage.location import parse_repository_url, store_errors, url_scheme

Hook = Callable[[str], None]


@dataclass
class ReplicaResult:
    """What the rollout did on one replica.

    Attributes:
        url: The replica's gRPC ``host:port``.
        previous: Versions it served before (READY).
        loaded: Whether it loaded the version and reported it ready.
        canary_ok: Whether every canary answer matched onnxruntime.
        seconds: Time spent on this replica (load + wait + canary).
        error: Why it failed ('' when it did not).
        restored_to: The version it was put back on after a failure, if any.
    """

    url: str
    previous: list[int] = field(default_factory=list)
    loaded: bool = False
    canary_ok: bool = False
    seconds: float = 0.0
    error: str = ""
    restored_to: int | None = None

    @property
    def ok(self) -> bool:
        """Loaded and answered right."""
        return self.loaded and self.canary_ok


@dataclass
class RolloutReport:
    """Per-replica results of one rollout; ``untouched`` lists replicas never reached.

    Example:
        >>> report = RolloutReport("ro", 2, [ReplicaResult("a:1", [1], True, True, 1.5)], ["b:1"])
        >>> report.completed, report.summary().splitlines()[1]
        (False, '  a:1: loaded=yes canary=ok 1.5 s (was [1])')
    """

    model: str
    version: int
    replicas: list[ReplicaResult]
    untouched: list[str] = field(default_factory=list)
    pinned_on_store: bool = False

    @property
    def completed(self) -> bool:
        """Every replica serves the version and passed its canary."""
        return not self.untouched and all(r.ok for r in self.replicas)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"model": self.model, "version": self.version, "completed": self.completed,
                "replicas": [asdict(r) for r in self.replicas], "untouched": self.untouched,
                "pinned_on_store": self.pinned_on_store}

    def summary(self) -> str:
        """Human-readable lines, one per replica."""
        state = "completed" if self.completed else "STOPPED"
        lines = [f"rollout of {self.model!r} version {self.version}: {state}"]
        for r in self.replicas:
            line = (f"  {r.url}: loaded={'yes' if r.loaded else 'no'} "
                    f"canary={'ok' if r.canary_ok else 'FAILED'} {r.seconds:.1f} s "
                    f"(was {r.previous})")
            if r.error:
                line += f"\n    error: {r.error}"
            if r.restored_to is not None:
                line += f"\n    put back on version {r.restored_to}"
            lines.append(line)
        lines += [f"  {url}: untouched (keeps its version)" for url in self.untouched]
        if self.pinned_on_store:
            lines.append(f"  store config pinned to version {self.version} "
                         "(replicas started later load it)")
        return "\n".join(lines)


def _restore(client: object, model: str, result: ReplicaResult, version: int,
             timeout: float) -> None:
    """Best effort: the failed replica serves its previous version again."""
    if not result.previous or result.previous == [version]:
        return
    target = result.previous[-1]
    try:
        rep.load_version(client, model, target, timeout)
        rep.wait_serving(client, model, target, timeout)
        result.restored_to = target
    except ExportError as error:
        result.error += f"; restoring version {target} failed too: {error}"


def roll_replica(url: str, model: str, version: int, cases: list[CanaryCase],
                 timeout: float) -> ReplicaResult:
    """Loads ``version`` on one replica, waits, runs the canary; restores it on failure."""
    started = time.monotonic()
    client = rep.connect(url)
    result = ReplicaResult(url)
    try:
        result.previous = rep.ready_versions(client, model)
        rep.load_version(client, model, version, timeout)
        rep.wait_serving(client, model, version, timeout)
        result.loaded = True
        result.error = rep.canary_failure(client, model, version, cases)
        result.canary_ok = not result.error
    except ExportError as error:
        result.error = str(error)
    except Exception as error:  # noqa: BLE001  (unreachable replica: report, then stop)
        result.error = f"replica {url} failed: {type(error).__name__}: {error}"
    if not result.ok:
        _restore(client, model, result, version, timeout)
    result.seconds = time.monotonic() - started
    client.close()
    return result


def rollout(replicas: Sequence[str], model: str, version: int, *, repo: str | Path,
            cases: int = DEFAULT_CASES, timeout: float = 120.0,
            before_each: Hook | None = None, after_each: Hook | None = None) -> RolloutReport:
    """Rolls ``version`` of ``model`` out to ``replicas`` in order; stops at the first failure.

    Args:
        replicas: gRPC ``host:port`` of each replica (explicit model control).
        model: Served model name.
        version: The version to serve (its folder must be in the replicas' repository).
        repo: Local copy of the repository (the canary's expected answers come from
            onnxruntime on ``repo/model/version/model.onnx``), or the ``s3://`` repository
            the replicas load (the version must be complete there; the pin moves to it).
        cases: Canary requests per replica.
        timeout: Seconds to wait for a replica to serve the version.
        before_each: Called with a replica's url before it is touched (e.g. drain it
            from the load balancer); ``after_each`` after it (also when it failed).

    Returns:
        The report; ``report.completed`` is False when the rollout stopped.

    Raises:
        ExportError: The local version folder is missing or broken, or the version is not
            complete on the store (no replica touched).
    """
    with _local_copy(repo, model, version) as folder:
        expected = canary_cases(folder, cases)
    results: list[ReplicaResult] = []
    for position, url in enumerate(replicas):
        if before_each:
            before_each(url)
        try:
            result = roll_replica(url, model, version, expected, timeout)
        finally:
            if after_each:
                after_each(url)
        results.append(result)
        if not result.ok:
            return RolloutReport(model, version, results, list(replicas[position + 1:]))
    report = RolloutReport(model, version, results)
    if url_scheme(repo) is not None:
        try:
            with store_errors(parse_repository_url(repo)):
                pin_serving_version(repo, model, version)
        except ExportError as error:
            raise ExportError(f"Every replica serves {model!r} version {version}, but moving "
                              f"the store's pin failed, so a replica started now would load "
                              f"the old version; run the rollout again: {error}") from error
        report.pinned_on_store = True
    return report


@contextlib.contextmanager
def _local_copy(repo: str | Path, model: str, version: int) -> Iterator[Path]:
    """The version's local folder; for a store, a checked download of a complete version."""
    if url_scheme(repo) is None:
        yield version_dir(repo, model, version)
        return
    with tempfile.TemporaryDirectory(prefix="kmr-rollout-") as copy:
        with store_errors(parse_repository_url(repo)):
            download_version(repo, model, version, copy)
        yield version_dir(copy, model, version)


def previous_version(repo: str | Path, model: str, version: int) -> int:
    """The highest version below ``version`` in the repository (on a store: complete ones).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as repo:
        ...     for v in (1, 3, 4):
        ...         (Path(repo) / "ro" / str(v)).mkdir(parents=True)
        ...     previous_version(repo, "ro", 4)
        3
    """
    if url_scheme(repo) is not None:
        with store_errors(parse_repository_url(repo)):
            found = find_complete_versions(repo, model)
    else:
        found = [int(p.name) for p in (Path(repo) / model).glob("*") if p.name.isdigit()]
    below = [v for v in found if v < version]
    if not below:
        raise ExportError(f"no version of {model!r} below {version} in {repo} to roll back to")
    return max(below)


def rollback(replicas: Sequence[str], model: str, version: int, *, repo: str | Path,
             **options: object) -> RolloutReport:
    """Rolls back from ``version``: rolls out `previous_version` the same way as `rollout`.

    Example (needs running replicas)::

        rollback(["10.0.0.1:8001"], "ro", 2, repo="model_repository")  # back to 1
    """
    target = previous_version(repo, model, version)
    return rollout(replicas, model, target, repo=repo, **options)
