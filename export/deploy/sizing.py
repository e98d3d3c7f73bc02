"""Resource requests for a Triton replica, sized from what the export wrote.

What one replica needs is read from a *local* copy of the repository: the newest version's
``export_manifest.json`` (table sizes, graph kind) and the model's ``config.pbtxt``
(``instance_group`` count, ``max_batch_size``, ``max_candidates``). Every onnxruntime
instance is its own session holding its own copy of the tables, so memory scales with
the instance count. The formula (constants below, all overridable)::

    table_bytes     = max(external_data_bytes, 4 * (num_users + num_items) * embedding_dim)
                      + id lookups: ids * ID_LOOKUP_BYTES_PER_ID[lookup] per vocabulary
    workspace_bytes = 4 * max_batch_size * num_items                        (retrieve)
                    = 4 * max_batch_size * max_candidates * (embedding_dim + 1)  (rerank)
    memory request  = BASE_MEMORY + sum over models of
                      instances * (MEMORY_FACTOR * table_bytes + workspace_bytes)
    cpu request     = BASE_CPU + sum over models of instances * CPU_PER_INSTANCE

``MEMORY_FACTOR`` = 2: the session's initializers plus the model bytes the backend holds
while it builds the session (an export below the external-data threshold is one
``model.onnx`` that is read whole, then turned into initializers: the peak a replica must
survive at load and reload). Measured with onnxruntime 1.32 on an external-data export
(98 MiB of tables, retrieve): +86 MiB peak per session at load and ~85 MiB per session
after batch-64 runs, so 2x leaves room; the workspace term is the retrieve score matrix.
``BASE_MEMORY`` (512 MiB) and ``BASE_CPU`` are estimates for tritonserver with the
onnxruntime backend, not measured here (the local server has the python backend only).
Limits equal requests (memory: an overrun is a clear OOM kill of one replica, not node
pressure evicting neighbours; CPU: Guaranteed QoS, and the HPA's utilisation is of a
request the pod can actually reach).

Example:
    >>> s = ModelSizing("mf_retrieve", instances=2, table_bytes=100 * MIB, workspace_bytes=0)
    >>> r = size_resources([s])
    >>> r.memory_bytes == BASE_MEMORY_BYTES + 2 * 2 * 100 * MIB, r.cpu_millis
    (True, 2250)
    >>> r.as_kubernetes()["requests"]
    {'cpu': '2250m', 'memory': '912Mi'}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError

MIB = 1 << 20
FLOAT_BYTES = 4  # served tables are float32
MEMORY_FACTOR = 2.0
BASE_MEMORY_BYTES = 512 * MIB  # tritonserver + onnxruntime backend, idle
CPU_PER_INSTANCE_MILLIS = 1000  # one busy core per onnxruntime instance
BASE_CPU_MILLIS = 250  # HTTP/gRPC front ends, dynamic batcher, metrics
MANIFEST_FILE = "export_manifest.json"
CONFIG_FILE = "config.pbtxt"
# Session RSS per raw id baked into a graph (benchmarks/results/raw_ids.md, onnxruntime
# 1.32, 1M items + 100k users): LabelEncoder + raw-id table 79 MB for 1.1M int ids; 306 MB
# for 1.1M 13-character strings (longer strings cost more); compact lookup 12 MB.
ID_LOOKUP_BYTES_PER_ID = {"arithmetic": 0, "compact": 12, "label_encoder": 80,
                          "label_encoder_str": 320}


@dataclass(frozen=True)
class ModelSizing:
    """What one served model costs a replica.

    Attributes:
        name: The Triton model name (its folder in the repository).
        instances: onnxruntime instances (sum of the ``instance_group`` counts).
        table_bytes: Bytes of the embedding tables one instance holds.
        workspace_bytes: Bytes of the largest per-batch intermediate one instance builds.
    """

    name: str
    instances: int
    table_bytes: int
    workspace_bytes: int = 0

    def __post_init__(self) -> None:
        if self.instances < 1 or self.table_bytes < 0 or self.workspace_bytes < 0:
            raise ExportError(
                f"Invalid sizing for model {self.name!r}: need instances >= 1 and "
                f"non-negative byte counts, got instances={self.instances}, "
                f"table_bytes={self.table_bytes}, workspace_bytes={self.workspace_bytes}."
            )


@dataclass(frozen=True)
class Resources:
    """Requests (and equal limits) of one Triton container."""

    memory_bytes: int
    cpu_millis: int

    def as_kubernetes(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` block, quantities as strings (``Mi``, ``m``).

        Example:
            >>> Resources(memory_bytes=3 * MIB + 1, cpu_millis=1500).as_kubernetes()["limits"]
            {'cpu': '1500m', 'memory': '4Mi'}
        """
        amounts = {"cpu": f"{self.cpu_millis}m",
                   "memory": f"{math.ceil(self.memory_bytes / MIB)}Mi"}
        return {"requests": dict(amounts), "limits": dict(amounts)}


def size_resources(
    models: Iterable[ModelSizing],
    *,
    memory_factor: float = MEMORY_FACTOR,
    base_memory_bytes: int = BASE_MEMORY_BYTES,
    cpu_per_instance_millis: int = CPU_PER_INSTANCE_MILLIS,
    base_cpu_millis: int = BASE_CPU_MILLIS,
) -> Resources:
    """Applies the module's formula to the models one replica loads.

    Example:
        >>> one = ModelSizing("m", instances=1, table_bytes=10 * MIB)
        >>> two = ModelSizing("m", instances=2, table_bytes=10 * MIB)
        >>> size_resources([two]).memory_bytes - size_resources([one]).memory_bytes
        20971520
    """
    models = list(models)
    if not models:
        raise ExportError("No model to size: give at least one model name.")
    memory = base_memory_bytes + sum(
        m.instances * (memory_factor * m.table_bytes + m.workspace_bytes) for m in models
    )
    cpu = base_cpu_millis + sum(m.instances for m in models) * cpu_per_instance_millis
    return Resources(memory_bytes=math.ceil(memory), cpu_millis=cpu)


def table_bytes(manifest: dict[str, Any]) -> int:
    """Bytes of the tables an export's manifest describes (external data or float32 rows),
    plus its raw-id lookups (`id_lookup_bytes`).

    Example:
        >>> table_bytes({"num_users": 10, "num_items": 30, "embedding_dim": 8,
        ...              "external_data_bytes": 0})
        1280
        >>> table_bytes({"num_users": 10, "num_items": 30, "embedding_dim": 8,
        ...              "external_data_bytes": 0, "id_kind": "str"})  # + 40 x 320
        14080
    """
    rows = int(manifest["num_users"]) + int(manifest["num_items"])
    return max(int(manifest.get("external_data_bytes") or 0),
               FLOAT_BYTES * rows * int(manifest["embedding_dim"])) + id_lookup_bytes(manifest)


def id_lookup_bytes(manifest: dict[str, Any]) -> int:
    """Bytes the raw-id lookups of a raw-id graph hold (0 for a dense-index graph).

    A manifest written before lookups were recorded counts a LabelEncoder per vocabulary.

    Example:
        >>> id_lookup_bytes({"num_users": 10, "num_items": 30, "id_kind": "int",
        ...                  "id_lookup": {"users": "arithmetic", "items": "compact"}})
        360
        >>> id_lookup_bytes({"num_users": 10, "num_items": 30, "id_kind": "index"})
        0
    """
    kind = manifest.get("id_kind", "index")
    if kind not in ("int", "str"):
        return 0
    per_id = dict(ID_LOOKUP_BYTES_PER_ID)
    if kind == "str":
        per_id["label_encoder"] = per_id["label_encoder_str"]
    lookups = manifest.get("id_lookup") or {}
    return sum(int(manifest[f"num_{what}"]) * per_id.get(lookups.get(what), per_id["label_encoder"])
               for what in ("users", "items"))


def local_models(repo: str | Path) -> list[str]:
    """Model folders (those with a ``config.pbtxt``) of a local repository, sorted.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as repo:
        ...     (Path(repo) / "mf").mkdir()
        ...     _ = (Path(repo) / "mf" / CONFIG_FILE).write_text("")
        ...     local_models(repo)
        ['mf']
    """
    root = Path(repo)
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file())


def newest_version(model_dir: Path) -> Path:
    """The highest integer version folder of a model; ExportError if there is none."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                and not p.name.startswith("0")] if model_dir.is_dir() else []
    if not versions:
        raise ExportError(f"Model folder {model_dir} has no version folder (1, 2, ...).")
    return max(versions, key=lambda p: int(p.name))


def read_model_sizing(repo: str | Path, name: str) -> ModelSizing:
    """Sizes model ``name`` of a local repository from its newest version and config.

    Raises:
        ExportError: ``name`` is not a model of ``repo`` (the message lists those that
            are), or its manifest or config is missing or unreadable.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as repo:
        ...     _ = write_demo_model(repo, "mf_retrieve", instances=3)
        ...     read_model_sizing(repo, "mf_retrieve")
        ModelSizing(name='mf_retrieve', instances=3, table_bytes=1280, workspace_bytes=720)
    """
    root = Path(repo)
    if not root.is_dir():
        raise ExportError(f"Local repository {root} is not a folder.")
    available = local_models(root)
    if name not in available:
        raise ExportError(
            f"Model {name!r} is not in repository {root}; it has: "
            f"{', '.join(available) or 'no model folder with a config.pbtxt'}."
        )
    config = _read_config(root / name / CONFIG_FILE)
    version = newest_version(root / name)
    manifest = _read_manifest(version / MANIFEST_FILE)
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    return ModelSizing(name, instances=instances, table_bytes=table_bytes(manifest),
                       workspace_bytes=_workspace_bytes(manifest, config))


def _read_config(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    except (OSError, text_format.ParseError) as error:
        raise ExportError(f"Cannot read the model config {path}: {error}") from error


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"Cannot read the export manifest {path}: {error}") from error
    missing = [key for key in ("num_users", "num_items", "embedding_dim")
               if not isinstance(manifest.get(key), int)]
    if missing:
        raise ExportError(f"Export manifest {path} lacks integer {', '.join(missing)}.")
    return manifest


def _workspace_bytes(manifest: dict[str, Any], config: mc.ModelConfig) -> int:
    batch = max(config.max_batch_size, 1)
    if manifest.get("graph_kind") == "retrieve":
        return FLOAT_BYTES * batch * int(manifest["num_items"])
    candidates = config.parameters["max_candidates"].string_value if (
        "max_candidates" in config.parameters) else ""
    width = int(candidates) if candidates.isdigit() else int(manifest["num_items"])
    return FLOAT_BYTES * batch * width * (int(manifest["embedding_dim"]) + 1)


def write_demo_model(repo: str | Path, name: str, *, instances: int = 1,
                     graph_kind: str = "retrieve", version: int = 1) -> Path:
    """Writes a minimal model folder (config + manifest, no ONNX) for examples and tests.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as repo:
        ...     write_demo_model(repo, "mf", version=2).name
        '2'
    """
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=6)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
    manifest = {"graph_kind": graph_kind, "num_users": 10, "num_items": 30,
                "embedding_dim": 8, "k": 5, "external_data_bytes": 0}
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return version_dir
