"""A real served stack for end-to-end tests and benchmarks: export -> repository -> server.

`export_version` exports a tiny random-weight recommender (both graphs, python backend,
string raw ids in the vocabularies) into a model repository with the real
`export.api.export_model`. `start_served_stack` does that and starts a
`LocalTritonServer` on it; the `ServedStack` it yields carries everything a test needs:
the server and its urls, the repository, the model names, the artifacts and ONNX paths,
and an onnxruntime session per graph for reference answers.

The pytest fixture ``served_stack`` (tests/conftest.py) is one session-wide stack in
model control mode ``none``; fault tests start their own (see `start_served_stack`).

Example::

    with start_served_stack(tmp_path) as stack:
        expected = stack.reference("rerank", users, candidates)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.triton.local_server import LocalTritonServer, TritonInstallation
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import run_session

NAME = "rel"
NUM_USERS = 24
NUM_ITEMS = 60
DIM = 8
K = 5
MAX_BATCH = 8
USER_IDS = [f"user-{i:03d}" for i in range(NUM_USERS)]
ITEM_IDS = [f"item-{i:04d}" for i in range(NUM_ITEMS)]


def model_names(name: str = NAME) -> dict[str, str]:
    """Served model name per graph kind (``export_model(graph="both")`` naming)."""
    return {kind: f"{name}_{kind}" for kind in contract.GRAPH_KINDS}


def save_tiny_artifacts(folder: str | os.PathLike[str], seed: int) -> Path:
    """Saves a tiny random-weight model with string raw-id vocabularies; returns model.keras.

    Different seeds give clearly different weights (so answers tell versions apart).
    """
    from tests.support.export_helpers import save_artifacts, tiny_model

    model_path = save_artifacts(tiny_model(NUM_USERS, NUM_ITEMS, DIM, seed=seed), folder,
                                USER_IDS, ITEM_IDS)
    return model_path


def export_version(model_path: Path, repo: Path, *, name: str = NAME,
                   ids: str = "index") -> dict[str, Path]:
    """Exports both graphs (python backend) into ``repo``; returns kind -> version folder.

    ``ids="index"`` (the default here): these stacks test the dense-index contract and the
    client's vocabulary files; raw-id graphs have their own tests (tests/e2e/test_raw_ids*).
    """
    from export.api import ExportOptions, export_model

    result = export_model(
        model_path,
        repo,
        ExportOptions(name=name, graph="both", k=K, backend="python", max_batch_size=MAX_BATCH,
                      ids=ids),
    )
    return {m.graph_kind: m.version_dir for m in result.models}


def onnx_session(version_dir: Path) -> Any:
    """An onnxruntime session on a published version's model.onnx (the reference)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(version_dir / contract.ONNX_FILE),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )


def reference(session: Any, kind: str, users: Any, ids: Any = None,
              id_maps: tuple[Vocabulary, Vocabulary] | None = None) -> dict[str, np.ndarray]:
    """Outputs of ``session`` for dense ``users`` [B] and ``ids`` [B, N] (None: no exclusions).

    The graph's own answer to the same request: the served model must return exactly this
    (retrieve without exclusions is fed one -1 pad column, as model.py does). A raw-id
    graph needs its ``id_maps`` (users, items vocabularies); answers come back dense.
    """
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if ids is None:
        ids = np.full((len(users), 1), contract.INVALID_ID, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    return run_session(session, kind, {contract.USER_ID: users, contract.INPUTS[kind][1]: ids},
                       id_maps)


@dataclass
class ServedStack:
    """A running server on an exported repository, plus what tests compare against.

    Attributes:
        server: The running `LocalTritonServer`.
        repo: The model repository.
        artifacts: kind-independent trained ``model.keras`` of the served version.
        names: Served model name per graph kind.
        version_dirs: Published version folder per graph kind.
        onnx_paths: ``model.onnx`` per graph kind.
        sessions: onnxruntime session per graph kind (reference answers).
    """

    server: LocalTritonServer
    repo: Path
    artifacts: Path
    names: dict[str, str]
    version_dirs: dict[str, Path]
    onnx_paths: dict[str, Path] = field(default_factory=dict)
    sessions: dict[str, Any] = field(default_factory=dict)
    num_users: int = NUM_USERS
    num_items: int = NUM_ITEMS
    k: int = K
    max_batch_size: int = MAX_BATCH
    user_ids: list[str] = field(default_factory=lambda: list(USER_IDS))
    item_ids: list[str] = field(default_factory=lambda: list(ITEM_IDS))

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    def reference(self, kind: str, users: Any, ids: Any = None) -> dict[str, np.ndarray]:
        """onnxruntime's answer of the served version (see module `reference`)."""
        return reference(self.sessions[kind], kind, users, ids)


def build_repository(root: Path, *, seed: int = 0, name: str = NAME) -> tuple[Path, Path, dict]:
    """Exports version 1 into ``root/repo``; returns (repo, model.keras, version dirs)."""
    model_path = save_tiny_artifacts(root / f"artifacts-seed{seed}", seed)
    repo = root / "repo"
    return repo, model_path, export_version(model_path, repo, name=name)


@contextlib.contextmanager
def start_served_stack(
    root: str | os.PathLike[str],
    *,
    installation: TritonInstallation | None = None,
    model_control_mode: str = "none",
    repository_poll_secs: int | None = None,
    seed: int = 0,
    name: str = NAME,
) -> Iterator[ServedStack]:
    """Exports version 1 under ``root`` and serves it until the block ends.

    Args:
        root: An empty folder (``repo/`` and ``artifacts-seed<seed>/`` go there).
        installation: The server (default `export.triton.local_server.find_tritonserver`).
        model_control_mode: ``"none"`` (default), ``"poll"`` or ``"explicit"``.
        repository_poll_secs: Poll interval for ``"poll"``.
        seed: Weight seed of version 1.
        name: Model name prefix.
    """
    root = Path(root)
    repo, model_path, version_dirs = build_repository(root, seed=seed, name=name)
    server = LocalTritonServer(
        repo,
        installation=installation,
        model_control_mode=model_control_mode,
        repository_poll_secs=repository_poll_secs,
    )
    with server:
        yield ServedStack(
            server=server,
            repo=repo,
            artifacts=model_path,
            names=model_names(name),
            version_dirs=version_dirs,
            onnx_paths={kind: d / contract.ONNX_FILE for kind, d in version_dirs.items()},
            sessions={kind: onnx_session(d) for kind, d in version_dirs.items()},
        )
