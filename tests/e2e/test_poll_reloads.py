"""Poll mode: one export causes exactly one load per changed model (counted in the server log).

Before the fix the staging folder (inside the polled repository) and the python stub's
``__pycache__/`` (written into the version folder it loads) each looked like a change,
and one export reloaded each model about five times.
"""

from __future__ import annotations

import re
import time

import pytest

from export.api import ExportOptions, export_model
from export.triton.local_server import LocalTritonServer
from tests.support.export_helpers import save_artifacts, tiny_model

pytestmark = pytest.mark.triton

NAMES = ("poll_rerank", "poll_retrieve")
POLL_SECS = 1


def _loads(log: str, name: str) -> list[int]:
    """Versions of ``name`` the server started loading, in order ("loading: name:N")."""
    return [int(v) for v in re.findall(rf'"loading: {re.escape(name)}:(\d+)"', log)]


def _files(repo) -> dict:
    return {p.relative_to(repo): p.stat().st_mtime_ns for p in repo.rglob("*")}


def test_one_export_loads_each_model_once_when_server_polls(triton_home, tmp_path) -> None:
    model = save_artifacts(tiny_model(20, 50, 4), tmp_path / "artifacts")
    repo = tmp_path / "repo"
    options = ExportOptions(name="poll", graph="both", k=5, backend="python")
    export_model(model, repo, options)
    with LocalTritonServer(repo, installation=triton_home, model_control_mode="poll",
                           repository_poll_secs=POLL_SECS) as server:
        time.sleep(3 * POLL_SECS + 0.5)  # quiet: nothing changes, nothing reloads
        quiet = {name: _loads(server.log_text(), name) for name in NAMES}
        export_model(model, repo, options)  # version 2 of both
        written = _files(repo)
        deadline = time.monotonic() + 60
        while any(2 not in _loads(server.log_text(), n) for n in NAMES):
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)
        time.sleep(5 * POLL_SECS + 0.5)  # several more polls: no further reload
        log = server.log_text()
    assert quiet == {name: [1] for name in NAMES}, quiet
    for name in NAMES:
        assert _loads(log, name) == [1, 2], (name, _loads(log, name))
    assert _files(repo) == written, "the server or its stub wrote into the repository"
    assert not list(repo.rglob(".kmr-staging-*")), "staging happened inside the repository"
