"""Reads a trained recommender straight from its ``.keras`` archive, without loading it.

``keras.saving.load_model`` materialises every variable of the model (plus TF copies):
about 3.5x the tables' bytes before the export has done anything. The export needs much
less: the model's *structure* (to know it is a kmr recommender and how it scores) and
its two embedding tables, read a few rows at a time. This module provides exactly that.

Safety (the ``safe_mode`` guarantee of ``load_model(path, safe_mode=True)``):

* ``config.json`` is parsed as JSON; no code is executed to read it. Every object in the
  model config (recursively) must be one of the classes a `kmr.models.build_recommender`
  model is made of (`ALLOWED_CLASSES`), the layers must be exactly those of the kmr
  recommender (two inputs, the embedding, ``expand_dims``, the similarity, the top-k
  selector), and kmr layers must carry their ``kmr>`` registered names. A ``Lambda``,
  an unknown class or a different structure is refused with `ArchiveError`.
* `sample_model` additionally deserialises that (validated) config with Keras itself
  under ``safe_mode=True`` -- with the embedding shrunk to the sampled rows -- so the
  export can still compare its graphs with a real ``model(...)`` call at any size.
* ``compile_config`` (optimizer, loss) is never deserialised: the export does not need it.

Weights: ``model.weights.h5`` is opened with h5py inside the zip (members are stored
uncompressed by Keras; a compressed member is first streamed to a temporary file). The
embedding datasets must have the shapes the config declares. Rows are read with
``os.pread`` at the dataset's file offset when it is stored contiguously as
little-endian float32 (what Keras writes), else through h5py; either way only the
requested rows are in memory (`ArchiveTable`). Optimizer slots in the h5 are ignored.

Example:
    >>> import tempfile, os
    >>> from kmr.models import build_recommender
    >>> with tempfile.TemporaryDirectory() as d:
    ...     build_recommender(3, 5, 2).save(os.path.join(d, "model.keras"))
    ...     with open_archive(os.path.join(d, "model.keras")) as archive:
    ...         archive.num_users, archive.items.shape, archive.items[1:3].shape
    (3, (5, 2), (2, 2))
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
_EMBEDDING = "CollaborativeUserItemEmbedding"
_SIMILARITY = "NormalizedDotProductSimilarity"
_SELECTOR = "TopKRecommendationSelector"
_KMR_LAYERS = (_EMBEDDING, _SIMILARITY, _SELECTOR)
# Layers that only move axes: a model may route the embedding outputs through them.
_SHAPE_ONLY = frozenset({"ExpandDims", "Reshape", "Flatten", "Squeeze"})
# Every class a served model's config may name (layers, dtype policies, tensors): the kmr
# layers, inputs and axis-only plumbing. Anything else (a Lambda, a Dense, ...) computes
# something the served graphs would not reproduce, so it is refused.
ALLOWED_CLASSES = frozenset(
    {"Functional", "InputLayer", "DTypePolicy", "__keras_tensor__", *_SHAPE_ONLY,
     *_KMR_LAYERS}
)
_MAX_CONFIG_BYTES = 1 << 20
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_READ_ROWS = 1 << 16  # rows per h5py read on the fallback path


class ArchiveError(ValueError):
    """The file is not a readable, safe ``.keras`` archive of a kmr recommender."""


class ArchiveTable:
    """One embedding table in the archive, read on demand as float32 numpy rows.

    Supports what the export needs from a numpy table: ``shape``, ``dtype``, ``len``,
    row slices (``table[a:b]``), integer / integer-array indexing (any shape, duplicates
    and any order allowed; ids must be in range) and ``np.asarray(table)`` (reads all of
    it: small tables and tests only).

    Args:
        dataset: The h5py dataset (kept open by the owning `KerasArchive`).
        fd: File descriptor of the file holding the h5 bytes.
        data_offset: Byte offset of the dataset's contiguous float32 data in ``fd``, or
            None to read through h5py.
    """

    def __init__(self, dataset: Any, fd: int, data_offset: int | None) -> None:
        self._dataset = dataset
        self._fd = fd
        self._offset = data_offset
        self.shape: tuple[int, int] = tuple(int(s) for s in dataset.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    @property
    def direct(self) -> bool:
        """Whether rows are read with ``os.pread`` (True) or through h5py (False)."""
        return self._offset is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the table as float32."""
        return 4 * self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.rows(0, self.shape[0])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("ArchiveTable supports row slices with step 1 only.")
            return self.rows(start, max(start, stop))
        ids = np.asarray(key)
        if ids.dtype.kind not in "iu":
            raise IndexError(f"ArchiveTable rows must be indexed by ints. Received: {key!r}")
        return self.take(ids)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new C-contiguous float32 array."""
        n, d = self.shape
        if not 0 <= start <= stop <= n:
            raise IndexError(f"Rows [{start}, {stop}) out of range for a table of {n} rows.")
        out = np.empty((stop - start, d), np.float32)
        if out.size == 0:
            return out
        if self._offset is None:
            for a in range(start, stop, _READ_ROWS):
                b = min(stop, a + _READ_ROWS)
                out[a - start : b - start] = self._dataset[a:b]
            return out
        view = memoryview(out).cast("B")
        position = self._offset + start * d * 4
        while view.nbytes:
            got = os.preadv(self._fd, [view], position)
            if got <= 0:
                raise ArchiveError("The weights file ended before the table did (truncated).")
            view, position = view[got:], position + got
        return out

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any shape, duplicates allowed): shape ``ids.shape + (D,)``."""
        ids = np.asarray(ids, np.int64)
        n, d = self.shape
        if ids.size and (ids.min() < -n or ids.max() >= n):
            bad = ids.min() if ids.min() < -n else ids.max()
            raise IndexError(f"Row id {int(bad)} is out of range for a table of {n} rows.")
        flat = np.where(ids < 0, ids + n, ids).ravel()
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((len(unique), d), np.float32)
        # Runs of consecutive ids are read at once (a sorted sample has few runs).
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(np.arange(len(unique)), breaks):
            if run.size:
                first = int(unique[run[0]])
                rows[run] = self.rows(first, first + run.size)
        return rows[inverse].reshape((*ids.shape, d))

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(start, rows[start:start + rows])`` over the whole table."""
        for start in range(0, self.shape[0], rows):
            yield start, self.rows(start, min(self.shape[0], start + rows))


@dataclass(frozen=True)
class InputSpec:
    """One model input as its InputLayer declares it (``shape`` includes the batch axis)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class RecommenderConfig:
    """What the validated ``config.json`` says about the recommender.

    Attributes:
        model_config: The full model config (``compile_config`` removed).
        embedding_name: Name of the embedding layer.
        num_users: Rows of the user table.
        num_items: Rows of the item table.
        embedding_dim: Width D.
        normalization: The similarity layer's normalization option.
        similarity_config: The similarity layer's config (to rebuild it).
        selector_k: The model's `TopKRecommendationSelector` k, or None without one.
    """

    model_config: dict[str, Any]
    embedding_name: str
    num_users: int
    num_items: int
    embedding_dim: int
    normalization: str
    similarity_config: dict[str, Any]
    selector_k: int | None = None
    user_input: InputSpec | None = None
    item_input: InputSpec | None = None


class KerasArchive:
    """An opened, validated ``.keras`` archive of a kmr recommender (use `open_archive`).

    Attributes:
        path: The archive.
        config: The validated `RecommenderConfig`.
        users: The user table (`ArchiveTable`, ``[num_users, D]``).
        items: The item table (`ArchiveTable`, ``[num_items, D]``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files: list[Any] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        import h5py

        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as error:
            raise ArchiveError(f"not a .keras (zip) archive: {error}") from error
        with zf:
            names = set(zf.namelist())
            for member in (CONFIG_FILE, WEIGHTS_FILE):
                if member not in names:
                    raise ArchiveError(f"the archive has no {member} (found {sorted(names)}).")
            info = zf.getinfo(CONFIG_FILE)
            if info.file_size > _MAX_CONFIG_BYTES:
                raise ArchiveError(f"{CONFIG_FILE} is {info.file_size} bytes: too large.")
            self.config = parse_config(zf.read(CONFIG_FILE))
            h5_path, base = self._weights_location(zf, zf.getinfo(WEIGHTS_FILE))
            size = zf.getinfo(WEIGHTS_FILE).file_size
        raw = open(h5_path, "rb")  # noqa: SIM115 - closed by close()
        self._files.append(raw)
        if os.fstat(raw.fileno()).st_size < base + size:
            raise ArchiveError(f"{WEIGHTS_FILE} is truncated.")
        window = _Window(raw, base, size)
        try:
            h5 = h5py.File(window, "r")
        except Exception as error:  # noqa: BLE001 - h5py raises OSError and others
            raise ArchiveError(f"{WEIGHTS_FILE} is not a readable HDF5 file: {error}") from error
        self._files.append(h5)
        user_ds, item_ds = _embedding_datasets(h5, self.config)
        self.users = ArchiveTable(user_ds, raw.fileno(), _direct_offset(user_ds, base, size))
        self.items = ArchiveTable(item_ds, raw.fileno(), _direct_offset(item_ds, base, size))

    def _weights_location(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[Path, int]:
        """(file, offset) of the h5 bytes: in place if stored, else a temporary copy."""
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(_ZIP_LOCAL_HEADER.size)
            if len(header) == _ZIP_LOCAL_HEADER.size:
                signature, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(header)
                if signature == b"PK\x03\x04":
                    return self.path, info.header_offset + _ZIP_LOCAL_HEADER.size + (
                        name_len + extra_len)
            raise ArchiveError(f"bad zip local header for {WEIGHTS_FILE}.")
        # Compressed member: stream it to disk once (never whole into memory).
        self._tmpdir = tempfile.TemporaryDirectory(prefix="kmr-keras-archive-")
        target = Path(self._tmpdir.name) / WEIGHTS_FILE
        try:
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, OSError, RuntimeError) as error:
            raise ArchiveError(f"cannot extract {WEIGHTS_FILE}: {error}") from error
        return target, 0

    @property
    def num_users(self) -> int:
        return self.config.num_users

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def similarity_layer(self) -> Any:
        """A `NormalizedDotProductSimilarity` built from the validated config (stateless)."""
        from kmr.layers import NormalizedDotProductSimilarity

        return NormalizedDotProductSimilarity.from_config(
            {key: value for key, value in self.config.similarity_config.items()
             if key != "dtype"}
        )

    def close(self) -> None:
        """Closes the h5 file and the archive (and removes a temporary copy)."""
        for f in reversed(self._files):
            try:
                f.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
        self._files.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> KerasArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(path: str | os.PathLike[str]) -> KerasArchive:
    """Opens and validates ``path`` (see the module docstring); raises `ArchiveError`."""
    return KerasArchive(Path(path))


def parse_config(raw: bytes | str) -> RecommenderConfig:
    """Validates a ``config.json`` as exactly a kmr recommender (no code is executed).

    Raises:
        ArchiveError: Not JSON, a class outside `ALLOWED_CLASSES` (e.g. ``Lambda``), or a
            structure other than `kmr.models.build_recommender`'s.
    """
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{CONFIG_FILE} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("class_name") != "Functional":
        got = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise ArchiveError(f"expected a Functional model config. Received: {got!r}")
    config = {key: value for key, value in config.items() if key != "compile_config"}
    layers = config.get("config", {}).get("layers")
    if not isinstance(layers, list):
        raise ArchiveError("the model config has no layer list.")
    # Both checks run before either is reported, so a model with two embeddings and an Add
    # hears about both, and a Lambda is always named.
    try:
        _check_classes(config, "config")
        class_error = None
    except ArchiveError as error:
        class_error = error
    try:
        by_class = _kmr_layers(layers)
    except ArchiveError as error:
        if class_error is not None:
            raise ArchiveError(f"{error} Also, {class_error}") from None
        raise
    if class_error is not None:
        raise class_error
    user_input, item_input = _check_wiring(layers, by_class)
    _check_float32(by_class)
    emb = by_class[_EMBEDDING]["config"]
    sizes = [emb.get(key) for key in ("num_users", "num_items", "embedding_dim")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise ArchiveError(f"the embedding layer's sizes are invalid. Received: {sizes}")
    similarity = by_class[_SIMILARITY]["config"]
    from kmr.layers.normalized_dot_product_similarity import NORMALIZATIONS

    if similarity.get("normalization") not in NORMALIZATIONS:
        raise ArchiveError(
            f"unknown similarity normalization {similarity.get('normalization')!r}: "
            f"expected one of {NORMALIZATIONS}."
        )
    selector = by_class.get(_SELECTOR)
    return RecommenderConfig(config, str(by_class[_EMBEDDING].get("name")), *sizes,
                             similarity["normalization"], similarity,
                             selector["config"].get("k") if selector else None,
                             user_input, item_input)


def _kmr_layers(layers: list[Any]) -> dict[str, dict[str, Any]]:
    """The kmr layers by class: one embedding, one similarity, at most one selector."""
    found: dict[str, list[dict[str, Any]]] = {cls: [] for cls in _KMR_LAYERS}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
            raise ArchiveError("a layer entry of the model config is malformed.")
        if layer.get("class_name") in found:
            found[layer["class_name"]].append(layer)
    for cls, most in ((_EMBEDDING, 1), (_SIMILARITY, 1), (_SELECTOR, 1)):
        names = [str(layer.get("name")) for layer in found[cls]]
        if len(names) > most or (cls != _SELECTOR and not names):
            need = "at most one" if cls == _SELECTOR else "exactly one"
            raise ArchiveError(
                f"the model has {len(names)} {cls} layers {names}: export serves models "
                f"with {need} {cls} (one {_EMBEDDING} feeding one {_SIMILARITY}, "
                f"optionally one {_SELECTOR}).")
    return {cls: layers[0] for cls, layers in found.items() if layers}


def _sources(layer: dict[str, Any]) -> list[tuple[str, int]]:
    """``(layer name, output index)`` of every tensor the layer's first call consumes."""
    out: list[tuple[str, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                history = node.get("config", {}).get("keras_history")
                if isinstance(history, list) and len(history) == 3:
                    out.append((str(history[0]), int(history[2])))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ArchiveError(f"layer {layer.get('name')!r} is called {len(nodes)} times; "
                           "export serves models whose layers are each called once.")
    walk(nodes[:1])
    return out


def _check_wiring(layers: list[Any],
                  kmr: dict[str, dict[str, Any]]) -> tuple[InputSpec, InputSpec]:
    """The similarity must score the embedding's two outputs, fed by the model's inputs.

    Returns the user and item inputs of the model.
    """
    by_name = {str(layer.get("name")): layer for layer in layers}

    def origin(source: tuple[str, int]) -> tuple[str, int]:
        seen = set()
        while by_name.get(source[0], {}).get("class_name") in _SHAPE_ONLY:
            if source in seen:
                break
            seen.add(source)
            inputs = _sources(by_name[source[0]])
            if len(inputs) != 1:
                break
            source = inputs[0]
        return source

    emb, sim = str(kmr[_EMBEDDING].get("name")), str(kmr[_SIMILARITY].get("name"))
    fed = sorted(origin(s) for s in _sources(kmr[_SIMILARITY]))
    if fed != [(emb, 0), (emb, 1)]:
        raise ArchiveError(
            f"the {_SIMILARITY} layer {sim!r} is fed by {fed}, not by the user and item "
            f"vectors of the {_EMBEDDING} layer {emb!r}: export can only serve a "
            "similarity of the embedding's own outputs.")
    inputs = [origin(s) for s in _sources(kmr[_EMBEDDING])]
    if len(inputs) != 2 or any(by_name.get(name, {}).get("class_name") != "InputLayer"
                               for name, _ in inputs):
        raise ArchiveError(f"the {_EMBEDDING} layer {emb!r} must take [user ids, item ids] "
                           f"straight from the model's inputs. Received: {inputs}")
    if _SELECTOR in kmr and [origin(s) for s in _sources(kmr[_SELECTOR])] != [(sim, 0)]:
        raise ArchiveError(f"the {_SELECTOR} layer must select from the scores of {sim!r}.")
    specs = []
    for (name, _), what in zip(inputs, ("user ids", "item ids"), strict=True):
        config = by_name[name]["config"]
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        dtype = config.get("dtype")
        dtype = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if dtype not in ("int32", "int64"):
            raise ArchiveError(f"the model input {name!r} ({what}) has dtype {dtype!r}: "
                               "expected int32 or int64 ids.")
        if not isinstance(shape, list | tuple) or len(shape) not in (1, 2, 3):
            raise ArchiveError(f"the model input {name!r} ({what}) has shape {shape!r}.")
        specs.append(InputSpec(name, tuple(shape), dtype))
    user, item = specs
    if user.shape[1:] not in ((), (1,)):
        raise ArchiveError(f"the user input {user.name!r} has shape {list(user.shape)}: "
                           "expected [batch] or [batch, 1].")
    if len(item.shape) != 2:
        raise ArchiveError(f"the item input {item.name!r} has shape {list(item.shape)}: "
                           "expected [batch, candidates].")
    return user, item


def _check_float32(kmr: dict[str, dict[str, Any]]) -> None:
    """Refuses reduced-precision dtype policies (decided: serve float32 weights only)."""
    for cls, layer in kmr.items():
        dtype = layer["config"].get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if name not in (None, "float32"):
            raise ArchiveError(
                f"the {cls} layer {layer.get('name')!r} uses dtype policy {name!r}: export "
                "serves float32 models only. Rebuild the model with dtype='float32', copy "
                "the weights in (model.set_weights) and save it again.")


def _check_classes(node: Any, where: str) -> None:
    """Refuses, at any depth, a ``class_name`` outside `ALLOWED_CLASSES` or one that
    Keras would resolve to something else: Keras looks a class up by ``registered_name``
    first and imports ``module``, so kmr layers must say ``kmr>Class`` / ``kmr.*`` and
    every other class ``Class`` (or nothing) / ``keras*``.
    """
    if isinstance(node, dict):
        cls = node.get("class_name")
        if cls is not None and cls not in ALLOWED_CLASSES:
            raise ArchiveError(
                f"{where} uses class {cls!r}, which is not part of a kmr recommender "
                f"(allowed: {sorted(ALLOWED_CLASSES)}); refused without running it."
            )
        if cls is not None:
            registered, module = node.get("registered_name"), node.get("module")
            kmr = cls in _KMR_LAYERS
            names = (f"kmr>{cls}",) if kmr else (None, cls)
            package = "kmr" if kmr else "keras"
            if registered not in names:
                raise ArchiveError(
                    f"{where} of class {cls} is not registered as {names[-1]!r}. "
                    f"Received: registered_name={registered!r}"
                )
            if not (module is None and not kmr) and not (
                isinstance(module, str) and (module == package or module.startswith(f"{package}."))
            ):
                raise ArchiveError(
                    f"{where} of class {cls} must come from module {package!r}. "
                    f"Received: module={module!r}"
                )
        for key, value in node.items():
            _check_classes(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_classes(value, f"{where}[{i}]")


def _embedding_datasets(h5: Any, config: RecommenderConfig) -> tuple[Any, Any]:
    """The user and item datasets (vars 0 and 1 of the embedding), checked against config."""
    import h5py

    layers = h5.get("layers")
    if not isinstance(layers, h5py.Group):
        raise ArchiveError(f"{WEIGHTS_FILE} has no 'layers' group.")
    owners = []
    for group_name, group in layers.items():
        variables = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(variables, h5py.Group):
            raise ArchiveError(f"{WEIGHTS_FILE}: layers/{group_name} has no 'vars' group.")
        if len(variables):
            owners.append((group_name, variables))
    if len(owners) != 1 or owners[0][1].attrs.get("name") != config.embedding_name:
        raise ArchiveError(
            f"{WEIGHTS_FILE}: expected weights only for the embedding layer "
            f"{config.embedding_name!r}. Received weights for "
            f"{[(g, v.attrs.get('name')) for g, v in owners]}"
        )
    group_name, variables = owners[0]
    if sorted(variables) != ["0", "1"]:
        raise ArchiveError(f"{WEIGHTS_FILE}: layers/{group_name}/vars must hold exactly 0 and 1. "
                           f"Received: {sorted(variables)}")
    d = config.embedding_dim
    out = []
    for key, rows, what in (("0", config.num_users, "user"), ("1", config.num_items, "item")):
        ds = variables[key]
        if not isinstance(ds, h5py.Dataset) or ds.shape != (rows, d):
            raise ArchiveError(
                f"{WEIGHTS_FILE}: the {what} table must have shape {(rows, d)} as the config "
                f"says. Received: {getattr(ds, 'shape', ds)}"
            )
        if ds.dtype.kind != "f":
            raise ArchiveError(f"{WEIGHTS_FILE}: the {what} table has dtype {ds.dtype}, "
                               "expected float.")
        out.append(ds)
    return out[0], out[1]


def _direct_offset(ds: Any, base: int, size: int) -> int | None:
    """File offset of a contiguous, unfiltered little-endian float32 dataset, else None.

    Raises:
        ArchiveError: The dataset's bytes lie beyond the end of the h5 file (truncated).
    """
    if ds.dtype != np.dtype("<f4") or ds.chunks is not None or ds.compression is not None:
        return None
    if ds.id.get_create_plist().get_nfilters():
        return None
    offset = ds.id.get_offset()
    nbytes = 4 * int(np.prod(ds.shape))
    if offset is None or ds.id.get_storage_size() != nbytes:
        return None
    if int(offset) + nbytes > size:
        raise ArchiveError(f"{WEIGHTS_FILE} is truncated: a table ends past the file's end.")
    return base + int(offset)


class _Window:
    """A read-only file object over ``size`` bytes of ``raw`` starting at ``base``."""

    def __init__(self, raw: IO[bytes], base: int, size: int) -> None:
        self._raw, self._base, self._size, self._pos = raw, base, size, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._size - self._pos))
        got = os.preadv(self._raw.fileno(), [view[:n]], self._base + self._pos) if n else 0
        self._pos += got
        return got

    def read(self, size: int = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else size
        buffer = bytearray(max(0, min(n, self._size - self._pos)))
        got = self.readinto(buffer)
        return bytes(buffer[:got])


def sample_model(
    archive: KerasArchive, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The archive's Keras model restricted to the given (valid) ids.

    The validated config is deserialised by Keras with ``safe_mode=True``, with the
    embedding tables shrunk to the unique ids given, whose trained rows are loaded.
    Calling the returned model on the returned local ids is the trained model's own
    ``model([user_ids, item_ids])`` (positions and scores), at any catalogue size.

    Returns:
        ``(model, local_user_ids, local_item_ids)``.

    Raises:
        ArchiveError: Keras refused the config in safe mode.
    """
    import keras

    import kmr.layers  # noqa: F401 - registers the kmr layers for deserialization

    users, local_users = np.unique(np.asarray(user_ids, np.int64), return_inverse=True)
    items, local_items = np.unique(np.asarray(item_ids, np.int64), return_inverse=True)
    config = copy.deepcopy(archive.config.model_config)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == _EMBEDDING:
            layer["config"].update(num_users=len(users), num_items=len(items))
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - keras raises many types for bad configs
        raise ArchiveError(f"Keras refused the model config in safe mode: {error}") from error
    from kmr.models import recommender_parts

    embedding = recommender_parts(model).embedding
    embedding.user_embeddings.assign(archive.users.take(users))
    embedding.item_embeddings.assign(archive.items.take(items))
    return (model, local_users.reshape(np.shape(user_ids)).astype(np.int64),
            local_items.reshape(np.shape(item_ids)).astype(np.int64))
