"""Helpers shared by the replica tests (tests/e2e/test_rollout.py, test_fleet_s3.py).

Example::

    with running(servers):
        assert served_versions(servers, "ro") == [[1], [1]]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from export.rollout import replica as rep


def export_rerank(root: Path, repo: Path, name: str, seed: int) -> Path:
    """Exports a tiny rerank model (weights from ``seed``, python backend) as the next
    version of ``name`` in ``repo``; returns its version folder."""
    from export.api import ExportOptions, export_model
    from tests.support.export_helpers import save_artifacts, tiny_model

    model_path = save_artifacts(tiny_model(seed=seed), root / f"artifacts-{seed}")
    options = ExportOptions(name=name, graph="rerank", k=5, backend="python")
    return export_model(model_path, repo, options).models[0].version_dir


@contextlib.contextmanager
def running(servers: Sequence[Any]) -> Iterator[None]:
    """Starts every `LocalTritonServer`, waits until all are ready, always stops them."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_until_ready()
        yield
    finally:
        for server in servers:
            server.stop()


def grpc_urls(servers: Sequence[Any]) -> list[str]:
    """The replicas' gRPC ``host:port``, in order (a rollout's ``replicas``)."""
    return [s.grpc_url for s in servers]


def served_versions(servers: Sequence[Any], model: str) -> list[list[int]]:
    """The READY versions of ``model`` on each replica."""
    found = []
    for url in grpc_urls(servers):
        client = rep.connect(url)
        try:
            found.append(rep.ready_versions(client, model))
        finally:
            client.close()
    return found


def drained(lb: Any) -> dict:
    """Rollout hooks: nginx routes around the replica being loaded and checked."""
    return {"before_each": lb.drain, "after_each": lb.undrain}
