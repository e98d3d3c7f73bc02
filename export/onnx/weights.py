"""Turns a converted graph's table *inputs* into initializers holding the real weights.

The converter only ever saw the tables as inputs (`export.onnx.graphs`). Here each
table input is removed from ``graph.input`` and added as an initializer of the same
name: inline (``raw_data``) when all tables together are at most the threshold, else as
ONNX external data in one raw float32 file (`kmr.contract.ONNX_WEIGHTS_FILE`) next to
``model.onnx``. External data is streamed chunk by chunk from the model's arrays
(no second full copy in memory), each tensor at a 4 KiB aligned offset so
onnxruntime can memory-map it.

Example:
    >>> import onnx
    >>> from kmr.models import build_recommender
    >>> from export.onnx.graphs import serving_graph
    >>> graph = serving_graph(build_recommender(3, 5, 2, k=2), "rerank", k=2)
    >>> proto = onnx.ModelProto()  # normally tf2onnx's output, with the table inputs
    >>> for t in graph.tables:
    ...     _ = proto.graph.input.add(name=t.name)
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     files = bake_tables(proto, graph.tables, d, external_threshold_bytes=0)
    ...     [f.name for f in files], len(proto.graph.input)
    (['model.onnx.data'], 0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx

from export.onnx.graphs import TableSpec
from kmr import contract

_ALIGN = 4096
# The whole model.onnx (a protobuf) must stay under 2 GB; inline tables count fully.
MAX_INLINE_BYTES = 1 << 30


def bake_tables(
    proto: onnx.ModelProto,
    tables: Sequence[TableSpec],
    out_dir: str | os.PathLike[str],
    *,
    external_threshold_bytes: int,
) -> list[Path]:
    """Replaces the table inputs of ``proto`` by initializers, in place.

    Args:
        proto: The converted model; its ``graph.input`` holds one input per table.
        tables: The tables in serving layout (names match the graph inputs).
        out_dir: Folder that receives the external data file when it is used.
        external_threshold_bytes: Tables totalling more than this go to external data
            (0 forces external data, e.g. to test that path on a tiny model).

    Returns:
        The files written (the external data file, or nothing).

    Raises:
        ValueError: A table has no matching graph input, or the threshold would make
            ``model.onnx`` exceed the protobuf limit.
    """
    if external_threshold_bytes > MAX_INLINE_BYTES:
        raise ValueError(
            f"Invalid value received for argument `external_threshold_bytes`. Expected at "
            f"most {MAX_INLINE_BYTES} (protobuf files are limited to 2 GB). "
            f"Received: external_threshold_bytes={external_threshold_bytes}"
        )
    inputs = {i.name: i for i in proto.graph.input}
    missing = [t.name for t in tables if t.name not in inputs]
    if missing:
        raise ValueError(f"The converted graph has no input(s) {missing} to bake weights into.")
    for table in tables:
        proto.graph.input.remove(inputs[table.name])

    external = sum(t.nbytes for t in tables) > external_threshold_bytes
    if not external:
        for table in tables:
            proto.graph.initializer.append(_inline_tensor(table))
        return []
    data_path = Path(out_dir) / contract.ONNX_WEIGHTS_FILE
    offset = 0
    with open(data_path, "wb") as f:
        for table in tables:
            offset = -(-offset // _ALIGN) * _ALIGN
            _stream(table, f.fileno(), offset)
            proto.graph.initializer.append(_external_tensor(table, offset))
            offset += table.nbytes
        f.truncate(offset)
    return [data_path]


def _inline_tensor(table: TableSpec) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=table.name, data_type=onnx.TensorProto.FLOAT)
    tensor.dims.extend(table.shape)
    tensor.raw_data = table.to_numpy().tobytes()
    return tensor


def _external_tensor(table: TableSpec, offset: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=table.name, data_type=onnx.TensorProto.FLOAT)
    tensor.dims.extend(table.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (
        ("location", contract.ONNX_WEIGHTS_FILE),
        ("offset", str(offset)),
        ("length", str(table.nbytes)),
    ):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _stream(table: TableSpec, fd: int, base: int) -> None:
    written = 0
    for offset, piece in table.chunks():
        view = memoryview(piece)
        while view.nbytes:  # pwrite may write less than asked
            n = os.pwrite(fd, view, base + offset)
            view, offset, written = view[n:], offset + n, written + n
    if written != table.nbytes:
        raise RuntimeError(
            f"Table {table.name!r}: wrote {written} bytes, expected {table.nbytes}."
        )
