"""Shared pytest fixtures (generic; no test-specific models here)."""

from __future__ import annotations

import pytest

from export.triton.local_server import (
    TritonInstallation,
    TritonNotInstalledError,
    find_tritonserver,
)


@pytest.fixture(scope="session")
def triton_home() -> TritonInstallation:
    """The local Triton server from scripts/setup_triton.sh; fails (never skips) if absent."""
    try:
        return find_tritonserver()
    except TritonNotInstalledError as e:
        pytest.fail(f"tritonserver not set up: run scripts/setup_triton.sh ({e})", pytrace=False)


@pytest.fixture(scope="session")
def served_stack(triton_home, tmp_path_factory):
    """A real tritonserver serving two freshly exported tiny models (see tests/served_stack.py).

    Mode ``none``, bound to 127.0.0.1; fields: urls, repo, model names, artifacts and ONNX
    paths, and one onnxruntime session per graph for reference answers.
    """
    from tests.support.served_stack import start_served_stack

    with start_served_stack(tmp_path_factory.mktemp("served_stack"),
                            installation=triton_home) as stack:
        yield stack


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    """A real SeaweedFS S3 store for the module, with the ``AWS_*`` environment pointing at it.

    boto3 (publish, rollout) and every tritonserver started in the module read that
    environment. Fails (never skips) when SeaweedFS cannot start.
    """
    import time

    from tests.support.object_store import ObjectStoreError, seaweedfs

    try:
        context = seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
        started = time.monotonic()
        running = context.__enter__()
    except ObjectStoreError as error:
        pytest.fail(f"SeaweedFS did not start: {error}", pytrace=False)
    print(f"seaweedfs S3 ready in {time.monotonic() - started:.1f} s")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in running.environment().items():
                patch.setenv(key, value)
            yield running
    finally:
        context.__exit__(None, None, None)
