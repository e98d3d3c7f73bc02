"""One call from a repository URL to written manifests (what ``kmr-export deploy`` runs).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from export.deploy.options import DeployOptions
    >>> from export.deploy.sizing import write_demo_model
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_demo_model(Path(tmp, "repo"), "mf_retrieve", instances=2)
    ...     result = deploy("s3://models/recsys", Path(tmp, "k8s"),
    ...                     DeployOptions(models=("mf_retrieve",)), from_local=Path(tmp, "repo"))
    ...     result.resources.cpu_millis, len(result.files)
    (2250, 8)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.deploy.location import RepositoryLocation, parse_repository
from export.deploy.manifests import TARGETS, plan_deployment, write_manifests
from export.deploy.options import DeployOptions
from export.deploy.sizing import (
    BASE_MEMORY_BYTES,
    MEMORY_FACTOR,
    ModelSizing,
    Resources,
    read_model_sizing,
    size_resources,
)
from export.errors import ExportError


@dataclass(frozen=True)
class DeployResult:
    """What `deploy` did: the location, per-model sizes, container resources, files."""

    location: RepositoryLocation
    sizing: tuple[ModelSizing, ...]
    resources: Resources
    files: tuple[Path, ...]


def resolve_sizing(location: RepositoryLocation, models: Sequence[str], *,
                   from_local: str | os.PathLike[str] | None = None,
                   table_bytes: int | None = None,
                   instances: int | None = None) -> list[ModelSizing]:
    """Per-model sizes: read from a local copy, with explicit values overriding.

    The local copy is the repository itself when it is a folder, else ``from_local``.
    Without one, both ``table_bytes`` and ``instances`` must be given.

    Example:
        >>> resolve_sizing(parse_repository("s3://bkt/r"), ["mf"], instances=2)
        Traceback (most recent call last):
        ...
        export.errors.ExportError: Cannot size the deployment of s3://bkt/r: it is not a \
local folder and there is no --table-bytes. Give --from-local DIR (a local copy of the \
repository as exported), or both --table-bytes and --instances.
    """
    local = location.local_path if location.scheme == "file" else from_local
    if location.scheme == "file" and from_local is not None:
        raise ExportError("--from-local is for s3:// and gs:// repositories; "
                          f"{location.local_path} is read directly.")
    if local is None:
        missing = " and ".join(flag for flag, value in (("--table-bytes", table_bytes),
                                                        ("--instances", instances))
                               if value is None)
        if missing:
            raise ExportError(
                f"Cannot size the deployment of {location.storage_uri()}: it is not a "
                f"local folder and there is no {missing}. Give --from-local DIR (a local "
                "copy of the repository as exported), or both --table-bytes and --instances."
            )
        return [ModelSizing(m, instances=instances, table_bytes=table_bytes) for m in models]
    out = []
    for model in models:
        read = read_model_sizing(local, model)
        out.append(ModelSizing(
            model, instances=read.instances if instances is None else instances,
            table_bytes=read.table_bytes if table_bytes is None else table_bytes,
            workspace_bytes=read.workspace_bytes))
    return out


def deploy(repo: str, out: str | os.PathLike[str], opts: DeployOptions, *,
           s3_endpoint: str | None = None, from_local: str | os.PathLike[str] | None = None,
           table_bytes: int | None = None, instances: int | None = None,
           memory_factor: float = MEMORY_FACTOR, base_memory_bytes: int = BASE_MEMORY_BYTES,
           targets: Sequence[str] = TARGETS) -> DeployResult:
    """Parses ``repo``, sizes the models, and writes the manifests under ``out``.

    ``memory_factor`` and ``base_memory_bytes`` replace the constants of
    `export.deploy.sizing`; the other keywords are those of `resolve_sizing`.
    """
    location = parse_repository(repo, s3_endpoint=s3_endpoint)
    sizing = resolve_sizing(location, opts.models, from_local=from_local,
                            table_bytes=table_bytes, instances=instances)
    if not 0 < memory_factor <= 16 or base_memory_bytes < 0:
        raise ExportError(f"Invalid sizing constants: memory factor {memory_factor} "
                          f"(expected 0..16), base memory {base_memory_bytes} B.")
    resources = size_resources(sizing, memory_factor=memory_factor,
                               base_memory_bytes=base_memory_bytes)
    plan = plan_deployment(opts, location, sizing, targets, resources=resources)
    files = write_manifests(out, plan)
    return DeployResult(location, tuple(sizing), resources, tuple(files))
