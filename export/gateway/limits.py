"""The largest legal request of each served model, in bytes on the wire.

A model's config says how large a legal request can be: ``max_batch_size`` rows, each
with one user id and at most ``max_candidates`` candidate ids (rerank) or
``max_exclude`` excluded ids (retrieve), plus a per-row index setting (IVF, int8). The
bytes per id depend on the encoding: 8 for INT64 and 4 + length for BYTES in binary
(gRPC, HTTP binary tensors); in JSON up to 20 characters for an int64 and 2 + twice the
length for a string (quotes, and every character escaped once at worst), each plus
`JSON_SEPARATOR_BYTES` for what separates values (``", "``, or a newline and the
indentation of pretty-printed JSON).
String ids have no fixed length, so the limit assumes ``max_id_bytes`` per id on
average (default `DEFAULT_MAX_ID_BYTES`). `OVERHEAD_BYTES` covers names, shapes,
parameters and framing.

Example:
    >>> from export.triton.config import build_model_config
    >>> config = build_model_config(name="m", graph_kind="rerank", id_kind="int", k=10,
    ...                             max_batch_size=64, max_candidates=1000)
    >>> limits = model_request_limits(config)
    >>> limits.grpc_bytes == OVERHEAD_BYTES + 64 * (1 + 1000) * 8
    True
    >>> limits.http_bytes == OVERHEAD_BYTES + 64 * (1 + 1000) * (20 + JSON_SEPARATOR_BYTES)
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError
from export.triton.config import CONFIG_FILE, model_parameters, read_model_config
from kmr import contract

DEFAULT_MAX_ID_BYTES = 64
OVERHEAD_BYTES = 64 * 1024
JSON_SEPARATOR_BYTES = 12
_INT64_BINARY, _INT64_JSON = 8, len(str(-(2**63))) + JSON_SEPARATOR_BYTES


@dataclass(frozen=True)
class RequestLimits:
    """Body-size limits (bytes): ``grpc_bytes`` for gRPC, ``http_bytes`` for HTTP (JSON or
    binary tensors, whichever is larger)."""

    grpc_bytes: int
    http_bytes: int

    def merged(self, other: RequestLimits) -> RequestLimits:
        """The larger of each limit (a gateway in front of several models)."""
        return RequestLimits(max(self.grpc_bytes, other.grpc_bytes),
                             max(self.http_bytes, other.http_bytes))


def model_request_limits(config: mc.ModelConfig, *,
                         max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> RequestLimits:
    """The limits of one model's largest legal request (see the module docstring)."""
    facts = model_parameters(config)
    rows = max(int(config.max_batch_size), 1)
    if facts.get(contract.PARAM_GRAPH_KIND) == contract.GRAPH_RERANK:
        per_row = int(facts.get(contract.PARAM_MAX_CANDIDATES, contract.DEFAULT_MAX_CANDIDATES))
    else:
        per_row = int(facts.get(contract.PARAM_MAX_EXCLUDE, contract.DEFAULT_MAX_EXCLUDE))
    ids = rows * (1 + per_row)
    settings = rows if facts.get(contract.PARAM_INDEX) in contract.INDEX_SETTINGS else 0
    if facts.get(contract.PARAM_ID_KIND) == contract.IDS_STR:
        binary, text = 4 + max_id_bytes, 2 + 2 * max_id_bytes + JSON_SEPARATOR_BYTES
    else:
        binary, text = _INT64_BINARY, _INT64_JSON
    return RequestLimits(
        grpc_bytes=OVERHEAD_BYTES + ids * binary + settings * _INT64_BINARY,
        http_bytes=OVERHEAD_BYTES + ids * max(binary, text) + settings * _INT64_JSON,
    )


def repository_request_limits(repo: str | os.PathLike[str], *,
                              max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> RequestLimits:
    """The largest limits over every model (folder with a ``config.pbtxt``) of ``repo``.

    Raises:
        ExportError: ``repo`` holds no model, or a config cannot be read.
    """
    configs = sorted(Path(repo).glob(f"*/{CONFIG_FILE}"))
    if not configs:
        raise ExportError(f"No model (a folder with {CONFIG_FILE}) in repository {repo}.")
    limits = RequestLimits(0, 0)
    for path in configs:
        try:
            config = read_model_config(path)
        except (OSError, text_format.ParseError) as error:
            raise ExportError(f"Cannot read the model config {path}: {error}") from error
        limits = limits.merged(model_request_limits(config, max_id_bytes=max_id_bytes))
    return limits
