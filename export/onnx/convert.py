"""Converts a `ServingGraph` to ``model.onnx`` (+ external data) and checks the result.

One code path for every size: tf2onnx converts the graph with the tables as inputs
(it never holds the weights), then `export.onnx.weights.bake_tables` writes them as
initializers. The result is checked with ``onnx.checker`` (by path, so external data
is checked too) and loaded by onnxruntime; any failure raises `ConversionError`.

Example:
    >>> import tempfile
    >>> from kmr.models import build_recommender
    >>> from export.onnx.graphs import serving_graph
    >>> graph = serving_graph(build_recommender(3, 5, 2, k=2), "rerank", k=2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     converted = convert_graph(graph, d)
    ...     converted.path.name, [i.name for i in load_session(converted.path).get_inputs()]
    ('model.onnx', ['user_id', 'item_ids'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from export.onnx.graphs import ServingGraph
from export.onnx.raw_ids import ServedIds, serve_ids
from export.onnx.weights import bake_tables
from kmr import contract

OPSET = 17  # tf2onnx supports <= 18; 17 also loads in older Triton onnxruntime backends
DEFAULT_EXTERNAL_THRESHOLD_BYTES = 64 << 20  # inline needs ~4 extra copies in RAM


class ConversionError(RuntimeError):
    """The converted model failed the checker, the onnxruntime load or a graph check."""


@dataclass(frozen=True)
class ConvertedModel:
    """Files of one converted graph.

    Attributes:
        path: The ``model.onnx`` file.
        files: Every file written (``model.onnx`` and, if used, the external data file).
        external_data: Whether the tables are stored as external data.
    """

    path: Path
    files: tuple[Path, ...]
    external_data: bool


def convert_graph(
    graph: ServingGraph,
    out_dir: str | os.PathLike[str],
    *,
    external_threshold_bytes: int = DEFAULT_EXTERNAL_THRESHOLD_BYTES,
    opset: int = OPSET,
    ids: ServedIds | None = None,
) -> ConvertedModel:
    """Converts ``graph`` into ``out_dir/model.onnx`` and checks it.

    Args:
        graph: The serving graph.
        out_dir: An existing folder.
        external_threshold_bytes: Tables totalling more bytes go to external data.
        opset: ONNX opset (tf2onnx supports <= 18).
        ids: The vocabularies to bake in, so the graph speaks raw ids
            (`export.onnx.raw_ids`; in ``graph``'s row order); None keeps dense indices.

    Returns:
        The files written.

    Raises:
        ConversionError: tf2onnx, the checker or onnxruntime refused the model, or its
            inputs/outputs are not the contract's.
    """
    out_dir = Path(out_dir)
    proto = _tf2onnx(graph, opset)
    serve_ids(proto, graph.kind, ids)
    proto.producer_name = "kmr-export"
    proto.doc_string = (
        f"kmr {graph.kind} graph, k={graph.k}, num_users={graph.num_users}, "
        f"num_items={graph.num_items}, embedding_dim={graph.embedding_dim}"
    )
    files = bake_tables(
        proto, graph.tables, out_dir, external_threshold_bytes=external_threshold_bytes
    )
    path = out_dir / contract.ONNX_FILE
    # Serialize directly: tensors already point at their external data.
    path.write_bytes(proto.SerializeToString())
    del proto
    check_onnx(path, graph.kind)
    return ConvertedModel(path, (path, *files), bool(files))


def _tf2onnx(graph: ServingGraph, opset: int) -> onnx.ModelProto:
    """tf2onnx with dynamic table shapes first, then the tables' static shapes.

    When both attempts fail, the error names both causes: the first is usually the one
    that explains the problem, the second only shows the fallback did not help.
    """
    attempts = (("dynamic table shapes", _relaxed_signature(graph)),
                ("static table shapes", graph.input_signature))
    errors = []
    for label, signature in attempts:
        try:
            proto, _ = tf2onnx.convert.from_function(graph.function,
                                                     input_signature=signature, opset=opset)
            return proto
        except Exception as error:  # noqa: BLE001 - tf2onnx raises many types
            errors.append((label, error))
    causes = "; ".join(f"with {label}: {type(e).__name__}: {e}" for label, e in errors)
    raise ConversionError(f"tf2onnx failed on the {graph.kind} graph ({causes})") from errors[0][1]


def _relaxed_signature(graph: ServingGraph) -> list[tf.TensorSpec]:
    """``graph.input_signature`` with each table's first dimension left unknown.

    Freezing (``convert_variables_to_constants_v2`` inside tf2onnx) a function whose
    row-major table inputs have a static ``[N, D]`` shape makes TF allocate and keep
    memory the size of the tables -- measured +512 MB for two 1M x 64 tables -- although
    no table value ever enters the converter. With the first dimension unknown (the row
    count of a row-major table, D of the transposed retrieve table) it does not. The
    converted graphs have the same ops (checked for both kinds and normalizations), and
    `export.onnx.weights.bake_tables` gives each table initializer its real shape. A
    graph that needs the static shapes still converts: `convert_graph` falls back to
    the exact signature.
    """
    specs = list(graph.input_signature)
    n = len(graph.request_signature)
    return specs[:n] + [
        tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, name=spec.name) for spec in specs[n:]
    ]


def check_onnx(path: str | os.PathLike[str], kind: str, *,
               index: str = contract.INDEX_EXACT) -> None:
    """Runs ``onnx.checker`` by path and checks the contract's input/output names.

    ``index`` is the retrieval index (`kmr.contract.INDEXES`): an IVF graph has the
    extra ``nprobe`` input (`kmr.contract.inputs_of`).

    Raises:
        ConversionError: The checker failed or the names differ from `kmr.contract`.
    """
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as error:  # noqa: BLE001 - checker errors vary by version
        raise ConversionError(f"onnx.checker rejected {path}: {error}") from error
    model = onnx.load(str(path), load_external_data=False)
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    expected = contract.inputs_of(kind, index)
    if inputs != expected or outputs != contract.OUTPUTS[kind]:
        raise ConversionError(
            f"{path}: expected inputs {expected} and outputs "
            f"{contract.OUTPUTS[kind]}. Received: inputs {inputs}, outputs {outputs}"
        )


def load_session(
    path: str | os.PathLike[str], *, threads: int = 0, prepack: bool = True
) -> ort.InferenceSession:
    """Loads ``path`` in an onnxruntime CPU session.

    Args:
        path: The ``model.onnx``.
        threads: Intra-op threads (0: onnxruntime's default).
        prepack: Let onnxruntime pre-pack constant MatMul weights (its default). The
            export's check/parity session turns it off: pre-packing copies the item
            table at load (twice the table at peak, then once more for the session's
            life) instead of reading the memory-mapped external data; the MatMul
            results are the same (tested in tests/export/test_keras_archive.py).

    Raises:
        ConversionError: onnxruntime refused the model.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
        raise ConversionError(f"onnxruntime could not load {path}: {error}") from error
