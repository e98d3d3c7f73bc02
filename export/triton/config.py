"""Build, write and read a served model's ``config.pbtxt`` from Triton's protobuf message.

The configuration is always a ``tritonclient.grpc.model_config_pb2.ModelConfig`` message,
serialized with ``google.protobuf.text_format`` (never string templates), so what we write
is exactly what Triton parses. Tensor names and parameter keys come from
:mod:`kmr.contract`.

Two backends:

* ``"onnxruntime"`` (production default): ``platform: "onnxruntime_onnx"``,
  ``backend: "onnxruntime"``, ``default_model_filename: "model.onnx"``.
* ``"python"`` (the local server, see :mod:`export.triton.local_server`): ``backend: "python"``
  running ``export/triton/python_backend/model.py``, which loads the same ``model.onnx`` with
  onnxruntime. Its variable-length inputs are ``allow_ragged_batch`` so requests with
  different candidate counts share one execution (``model.py`` pads them with -1).

Example:
    >>> from export.triton.config import build_model_config, model_parameters
    >>> cfg = build_model_config(name="mf", graph_kind="rerank", backend="python",
    ...                          id_kind="str", k=5)
    >>> model_parameters(cfg)["k"]
    5
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from kmr import contract

BACKEND_ONNXRUNTIME = "onnxruntime"
BACKEND_PYTHON = "python"
BACKENDS = (BACKEND_ONNXRUNTIME, BACKEND_PYTHON)
ONNX_PLATFORM = "onnxruntime_onnx"
CONFIG_FILE = contract.TRITON_CONFIG_FILE

# Python backend only: onnxruntime intra-op threads (model.py reads the same key).
PARAM_INTRA_OP_THREADS = "intra_op_num_threads"

# Warm-up candidate count for rerank (a concrete dims; all-zero ids are valid ids).
_WARMUP_CANDIDATES = 8

PARAM_SHARE_SESSION = "share_session_between_instances"  # onnxruntime backend option
_INT_PARAMS = (
    contract.PARAM_NUM_USERS,
    contract.PARAM_NUM_ITEMS,
    contract.PARAM_EMBEDDING_DIM,
    contract.PARAM_K,
    contract.PARAM_MAX_CANDIDATES,
    contract.PARAM_MAX_EXCLUDE,
    PARAM_INTRA_OP_THREADS,
)


def _check_positive(**values: int) -> None:
    for arg, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"Invalid value received for argument `{arg}`. Expected a positive int. "
                f"Received: {arg}={value!r}"
            )


def _add_input(
    config: mc.ModelConfig,
    name: str,
    dims: Sequence[int],
    data_type: int,
    *,
    scalar: bool = False,
    optional: bool = False,
    ragged: bool = False,
) -> None:
    tensor = config.input.add(name=name, data_type=data_type, dims=list(dims))
    if scalar:
        # Per-request dims [1] reshaped to [] so the model sees a [B] tensor.
        tensor.reshape.SetInParent()
    tensor.optional = optional
    tensor.allow_ragged_batch = ragged


def _check_kinds(graph_kind: str, id_kind: str, index: str) -> None:
    """ValueError naming a bad ``id_kind`` or ``index`` of `build_model_config`."""
    if id_kind not in contract.ID_KINDS:
        raise ValueError(
            f"Invalid value received for argument `id_kind`. Expected one of "
            f"{contract.ID_KINDS}. Received: id_kind={id_kind!r}"
        )
    if index not in contract.INDEXES or (index != contract.INDEX_EXACT
                                          and graph_kind != contract.GRAPH_RETRIEVE):
        raise ValueError(
            f"Invalid value received for argument `index`. Expected one of "
            f"{contract.INDEXES} (only 'exact' for rerank). Received: index={index!r} "
            f"for graph_kind={graph_kind!r}")


def _check_config_args(graph_kind: str, backend: str, max_queue_delay_us: int,
                       preferred_batch_sizes: Sequence[int] | None, *, max_batch_size: int,
                       **positive: int) -> None:
    """ValueError naming the first bad argument of `build_model_config`."""
    if graph_kind not in contract.GRAPH_KINDS:
        raise ValueError(
            f"Invalid value received for argument `graph_kind`. Expected one of "
            f"{contract.GRAPH_KINDS}. Received: graph_kind={graph_kind!r}"
        )
    if backend not in BACKENDS:
        raise ValueError(
            f"Invalid value received for argument `backend`. Expected one of {BACKENDS}. "
            f"Received: backend={backend!r}"
        )
    _check_positive(max_batch_size=max_batch_size, **positive)
    if max_queue_delay_us < 0:
        raise ValueError(
            "Invalid value received for argument `max_queue_delay_us`. Expected an int "
            f">= 0. Received: max_queue_delay_us={max_queue_delay_us!r}"
        )
    for size in preferred_batch_sizes or ():
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= max_batch_size:
            raise ValueError(
                "Invalid value received for argument `preferred_batch_sizes`. Expected ints "
                f"in [1, max_batch_size={max_batch_size}]. Received: "
                f"preferred_batch_sizes={list(preferred_batch_sizes)!r}"
            )


def _add_inputs_with_warmup(config: mc.ModelConfig, graph_kind: str, python: bool,
                            max_candidates: int, id_type: int, index: str) -> None:
    """The graph's inputs in contract order, and one warm-up request (zero / empty ids)."""
    # The onnxruntime graph takes user_id [B]: dims [1] reshaped to []. The python backend
    # gets [B, 1] unreshaped: Triton 2.51's python backend SIGSEGVs on a batch-0 request
    # whose first input is reshaped to rank 0, and without the reshape the core itself
    # rejects such a request ("input byte size mismatch"). The wire shape is [B, 1] for both.
    _add_input(config, contract.USER_ID, [1], id_type, scalar=not python)
    warmup = config.model_warmup.add(name=f"{graph_kind}_warmup", batch_size=1, count=1)
    warmup.inputs[contract.USER_ID].CopyFrom(
        mc.ModelWarmup.Input(data_type=id_type, dims=[1], zero_data=True)
    )
    if graph_kind == contract.GRAPH_RERANK:
        _add_input(config, contract.ITEM_IDS, [-1], id_type, ragged=python)
        warmup_dims = [min(_WARMUP_CANDIDATES, max_candidates)]
        warmup.inputs[contract.ITEM_IDS].CopyFrom(
            mc.ModelWarmup.Input(data_type=id_type, dims=warmup_dims, zero_data=True)
        )
    else:
        # Optional only where model.py fills it in: the ONNX graph itself requires it.
        _add_input(config, contract.EXCLUDE_ITEM_IDS, [-1], id_type, optional=python,
                   ragged=python)
        warmup.inputs[contract.EXCLUDE_ITEM_IDS].CopyFrom(
            mc.ModelWarmup.Input(data_type=id_type, dims=[1], zero_data=True)
        )
    setting = contract.INDEX_SETTINGS.get(index)
    if setting:  # nprobe (ivf) / rescore (int8)
        # Required by the onnxruntime backend (it refuses optional inputs on a batching
        # model); 0 asks for the exported default, so model.py sends 0 when it is missing.
        _add_input(config, setting, [1], mc.TYPE_INT64, scalar=not python, optional=python)
        warmup.inputs[setting].CopyFrom(
            mc.ModelWarmup.Input(data_type=mc.TYPE_INT64, dims=[1], zero_data=True))


def build_model_config(
    *,
    name: str,
    graph_kind: str,
    backend: str = BACKEND_ONNXRUNTIME,
    id_kind: str = contract.IDS_INDEX,
    k: int,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    max_candidates: int = contract.DEFAULT_MAX_CANDIDATES,
    max_exclude: int = contract.DEFAULT_MAX_EXCLUDE,
    preferred_batch_sizes: Sequence[int] | None = None,
    intra_op_threads: int = 1,
    index: str = contract.INDEX_EXACT,
) -> mc.ModelConfig:
    """Builds the ``ModelConfig`` of one served graph.

    Inputs and outputs follow :data:`kmr.contract.INPUTS` / :data:`kmr.contract.OUTPUTS`
    in that order (``model.py`` relies on the order: the user input comes first).

    Args:
        name: Model name (the folder name in the repository).
        graph_kind: ``contract.GRAPH_RERANK`` or ``contract.GRAPH_RETRIEVE``.
        backend: ``"onnxruntime"`` (production) or ``"python"`` (local server).
        id_kind: ``"int"`` / ``"str"`` (raw ids baked into the graph: INT64 / BYTES on
            the wire) or ``"index"`` (dense indices). Sizes of the tables are facts of a
            version (its ``export_manifest.json``), not of the model, so they are not here.
        k: Constant number of results per request.
        max_batch_size: Largest batch Triton forms.
        max_queue_delay_us: Dynamic batching queue delay in microseconds.
        instance_count: Number of CPU instances.
        max_candidates: Most candidates a rerank request may send.
        max_exclude: Most exclude ids a retrieve request may send.
        preferred_batch_sizes: Optional dynamic batching preferred sizes.
        intra_op_threads: onnxruntime intra-op threads (python backend only).
        index: ``"exact"``, ``"ivf"`` or ``"int8"`` (the last two retrieve only): they
            add their setting input (``nprobe`` / ``rescore``) and record ``index``. Their
            defaults and sizes are facts of a version (``export_manifest.json``).

    Returns:
        The configuration message.

    Raises:
        ValueError: On an unknown graph kind or backend, or a non-positive size.

    Example:
        >>> cfg = build_model_config(name="mf", graph_kind="retrieve", id_kind="int",
        ...                          k=4)
        >>> [t.name for t in cfg.output]
        ['top_item_ids', 'top_scores', 'num_results']
    """
    _check_config_args(graph_kind, backend, max_queue_delay_us, preferred_batch_sizes,
                       max_batch_size=max_batch_size, k=k,
                       instance_count=instance_count, max_candidates=max_candidates,
                       max_exclude=max_exclude, intra_op_threads=intra_op_threads)
    _check_kinds(graph_kind, id_kind, index)
    python = backend == BACKEND_PYTHON
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if python:
        config.backend = BACKEND_PYTHON
    else:
        config.platform = ONNX_PLATFORM
        config.backend = BACKEND_ONNXRUNTIME
        config.default_model_filename = contract.ONNX_FILE

    id_type = mc.TYPE_STRING if id_kind == contract.IDS_STR else mc.TYPE_INT64
    _add_inputs_with_warmup(config, graph_kind, python, max_candidates, id_type, index)
    for out in contract.OUTPUTS[graph_kind]:
        dtype = {contract.TOP_SCORES: mc.TYPE_FP32, contract.TOP_ITEM_IDS: id_type}.get(
            out, mc.TYPE_INT64)
        config.output.add(name=out, data_type=dtype,
                          dims=[1] if out == contract.NUM_RESULTS else [k])
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if preferred_batch_sizes:
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instance_count)
    params: dict[str, Any] = {
        contract.PARAM_GRAPH_KIND: graph_kind,
        contract.PARAM_ID_KIND: id_kind,
        contract.PARAM_K: k,
        contract.PARAM_MAX_CANDIDATES: max_candidates,
        contract.PARAM_MAX_EXCLUDE: max_exclude,
        contract.PARAM_USER_VOCAB: contract.USER_VOCAB_FILE,
        contract.PARAM_ITEM_VOCAB: contract.ITEM_VOCAB_FILE,
    }
    if index != contract.INDEX_EXACT:  # absent means exact (every export before them)
        params[contract.PARAM_INDEX] = index
    if python:
        params[PARAM_INTRA_OP_THREADS] = intra_op_threads
    elif instance_count > 1:
        # Triton's onnxruntime backend loads one session (one copy of the tables) per
        # instance unless told to share it.
        params[PARAM_SHARE_SESSION] = "true"
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    return config


def config_to_text(config: mc.ModelConfig) -> str:
    """Serializes a config to ``config.pbtxt`` text (protobuf text format)."""
    return text_format.MessageToString(config)


def config_from_text(text: str) -> mc.ModelConfig:
    """Parses ``config.pbtxt`` text into a ``ModelConfig`` (raises ``ParseError``)."""
    return text_format.Parse(text, mc.ModelConfig())


def write_model_config(path: str | Path, config: mc.ModelConfig) -> Path:
    """Writes ``config`` as text to ``path``.

    Args:
        path: A ``config.pbtxt`` file path, or a model folder (``config.pbtxt`` is added).
        config: The configuration message.

    Returns:
        The file written.

    Example:
        >>> import tempfile
        >>> cfg = build_model_config(name="mf", graph_kind="rerank", id_kind="int",
        ...                          k=4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_model_config(folder, cfg).name
        'config.pbtxt'
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_text(config), encoding="utf-8")
    return path


def read_model_config(path: str | Path) -> mc.ModelConfig:
    """Reads a ``config.pbtxt`` file (or a model folder holding one) into a ``ModelConfig``."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    return config_from_text(path.read_text(encoding="utf-8"))


def model_parameters(config: mc.ModelConfig) -> dict[str, Any]:
    """Returns the config's ``parameters`` as typed values.

    Known integer keys (``num_users``, ``k``, ...) become ``int``; every other value stays
    a ``str``.

    Example:
        >>> cfg = build_model_config(name="mf", graph_kind="rerank", id_kind="int",
        ...                          k=4)
        >>> facts = model_parameters(cfg)
        >>> facts["graph_kind"], facts["id_kind"], facts["k"]
        ('rerank', 'int', 4)
    """
    out: dict[str, Any] = {}
    for key, param in config.parameters.items():
        value = param.string_value
        if key in _INT_PARAMS:
            try:
                out[key] = int(value)
            except ValueError as e:
                raise ValueError(
                    f"Model config parameter `{key}` must be an integer. Received: {value!r}"
                ) from e
        else:
            out[key] = value
    return out
