"""Canary requests for a rollout: served answers against onnxruntime on the local version.

A version folder of the repository holds ``model.onnx`` (the exact graph the replica
serves) and ``perf_analyzer_data.json`` (requests of valid ids, in the version's own id
kind). The canary takes the first few of those requests, asks onnxruntime on the local
``model.onnx`` for the expected answers, and compares them with what the replica answers
for that version: ids, positions and counts exactly, scores within ``atol``. A replica that
loaded other weights, a stale file or a broken model answers differently and fails it.

Example:
    >>> import numpy as np
    >>> same = {"top_item_ids": np.array([[3, 1]]), "top_scores": np.array([[0.5, 0.25]])}
    >>> answer_mismatch(same, dict(same))
    ''
    >>> answer_mismatch(same, {**same, "top_item_ids": np.array([[1, 3]])})
    'top_item_ids differs: expected [[3, 1]], got [[1, 3]]'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from kmr import contract

PERF_DATA_FILE = "perf_analyzer_data.json"
DEFAULT_CASES = 4
SCORE_ATOL = 1e-4


@dataclass(frozen=True)
class CanaryCase:
    """One canary request: the wire inputs (batch of 1) and the expected outputs."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


def version_dir(repo: str | Path, model: str, version: int) -> Path:
    """The local version folder ``repo/model/version``; ExportError if it has no model.onnx.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as repo:
        ...     version_dir(repo, "ro", 7)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        export.errors.ExportError: no model.onnx for 'ro' version 7 in ...
    """
    folder = Path(repo) / model / str(version)
    if not (folder / contract.ONNX_FILE).is_file():
        raise ExportError(f"no {contract.ONNX_FILE} for {model!r} version {version} in {repo} "
                          "(the canary needs the local copy of the version being rolled out)")
    return folder


def _onnx_session(onnx_path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ExportError(f"the local {onnx_path} does not load in onnxruntime: {error}") from error


def _wire_inputs(row: dict, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    """A perf_analyzer data row as a batch-1 wire request (``[1, n]`` per input)."""
    inputs = {}
    for name, entry in row.items():
        values = np.asarray(entry["content"], dtype=dtypes.get(name, np.int64))
        inputs[name] = values.reshape(1, -1)
    return inputs


def _onnx_feed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph takes users as ``[B]`` and id lists as ``[B, n]`` (see model.py)."""
    return {name: (v.reshape(-1) if name == contract.USER_ID else v) for name, v in inputs.items()}


def canary_cases(folder: str | Path, cases: int = DEFAULT_CASES, *,
                 requests_from: str | Path | None = None) -> list[CanaryCase]:
    """The first ``cases`` requests of ``folder``'s perf data, with onnxruntime's answers.

    ``requests_from``: another version folder whose perf data gives the requests (so two
    versions' references answer the same requests).

    Raises:
        ExportError: The folder has no perf data, or its model.onnx does not load.
    """
    folder = Path(folder)
    data_path = Path(requests_from or folder) / PERF_DATA_FILE
    if not data_path.is_file():
        raise ExportError(f"no {PERF_DATA_FILE} in {data_path.parent}: re-export the version "
                          "(the canary takes its requests of valid ids from that file)")
    rows = json.loads(data_path.read_text(encoding="utf-8"))["data"][:cases]
    session = _onnx_session(folder / contract.ONNX_FILE)
    dtypes = {i.name: (object if i.type == "tensor(string)" else np.int64)
              for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    result = []
    for row in rows:
        inputs = _wire_inputs(row, dtypes)
        outputs = session.run(names, _onnx_feed(inputs))
        result.append(CanaryCase(inputs, dict(zip(names, outputs, strict=True))))
    return result


def answer_mismatch(expected: dict[str, np.ndarray], got: dict[str, np.ndarray],
                    atol: float = SCORE_ATOL) -> str:
    """'' when ``got`` matches ``expected`` (floats within ``atol``), else what differs."""
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            return f"output {name} missing"
        want, have = np.asarray(want), np.asarray(have)
        if want.dtype.kind == "f":
            same = want.shape == have.shape and np.allclose(want, have, atol=atol, rtol=0)
        else:
            same = want.shape == have.shape and np.array_equal(want.astype(have.dtype), have)
        if not same:
            return f"{name} differs: expected {want.tolist()}, got {have.tolist()}"
    return ""
