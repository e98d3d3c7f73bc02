"""Shared pytest fixtures (generic; no test-specific models here)."""

from __future__ import annotations

import pytest

from export.local_triton import TritonInstallation, TritonNotInstalledError, find_tritonserver


@pytest.fixture(scope="session")
def triton_home() -> TritonInstallation:
    """The local Triton server from scripts/setup_triton.sh; fails (never skips) if absent."""
    try:
        return find_tritonserver()
    except TritonNotInstalledError as e:
        pytest.fail(f"tritonserver not set up: run scripts/setup_triton.sh ({e})", pytrace=False)
