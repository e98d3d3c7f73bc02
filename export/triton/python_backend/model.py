"""Triton python-backend model that serves ``model.onnx`` with onnxruntime (CPU).

Static and self-contained: it runs inside the python-backend stub's own Python env, where
our packages are not installed, so it imports only numpy, onnxruntime, json, os and
``triton_python_backend_utils``. Copy it next to a version folder's ``model.onnx``::

    <repository>/<name>/config.pbtxt          (export/triton/config.py, backend "python")
    <repository>/<name>/<version>/model.py     (this file)
    <repository>/<name>/<version>/model.onnx

Everything it needs comes from ``args["model_config"]``: input names in contract order
(the user input first, then the id list, then the index setting ``nprobe`` (IVF) or
``rescore`` (int8) of a retrieve model: a request may leave it out, which sends 0, the
exported default), output names and dtypes, and the
``parameters`` ``graph_kind``, ``id_kind``, ``k``, ``max_candidates``, ``max_exclude`` and
``intra_op_num_threads``.

``execute`` validates the shape, dtype and size of every request on its own; a bad
request gets its own error response, while the good requests of the same call are padded
to a common width with an id the graph never recommends (-1 for indices, the reserved
PAD id for raw ids: an unknown candidate or exclusion never changes an answer), run as
ONE onnxruntime batch, and split back in order. Id *values* are the graph's business,
exactly as on a production onnxruntime-backend server: an unknown or out-of-range id
never fails a request (unknown user: an empty row; unknown candidate: never recommended;
unknown exclusion: ignored). BYTES ids are decoded as UTF-8.

numpy 2 inside the stub corrupts tensors exchanged through ``as_numpy``; the stub env
uses numpy<2, and under numpy>=2 this module switches to DLPack in both directions.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Parameter keys: same strings as kmr.contract.PARAM_* (this file cannot import kmr;
# tests/e2e/test_local_triton.py checks that they agree).
PARAM_GRAPH_KIND = "graph_kind"
PARAM_ID_KIND = "id_kind"
PARAM_K = "k"
PARAM_MAX_CANDIDATES = "max_candidates"
PARAM_MAX_EXCLUDE = "max_exclude"
PARAM_INTRA_OP_THREADS = "intra_op_num_threads"
PARAM_ONNX_FILE = "onnx_file"
SETTINGS = ("nprobe", "rescore")  # kmr.contract.NPROBE / RESCORE (index settings)
GRAPH_RERANK = "rerank"
GRAPH_RETRIEVE = "retrieve"
DEFAULT_ONNX_FILE = "model.onnx"
PAD_ID = -1
PAD_INT = -(2**63)  # kmr.contract.PAD_INT / PAD_STR: reserved, never a real raw id
PAD_STR = "\uffff"  # a Unicode noncharacter (reserved for internal use)
ID_KINDS = ("int", "str", "index")

_USE_DLPACK = int(np.__version__.split(".")[0]) >= 2


class RequestError(ValueError):
    """A single request is invalid; its message is returned to that request's client."""


def _to_numpy(tensor) -> np.ndarray:
    if _USE_DLPACK:
        try:
            return np.from_dlpack(tensor)
        except (TypeError, ValueError, BufferError):  # BYTES: DLPack has no string type
            pass
    return tensor.as_numpy()


def _to_triton(name: str, array: np.ndarray):
    if array.dtype == np.object_ or array.dtype.kind == "U":  # BYTES: UTF-8 encoded
        encoded = np.array([_text(v).encode("utf-8") for v in array.ravel()], dtype=object)
        return pb_utils.Tensor(name, encoded.reshape(array.shape))
    array = np.ascontiguousarray(array)
    if _USE_DLPACK:
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, array)


def _int_param(params: dict, key: str, default: int | None = None) -> int:
    raw = params.get(key, {}).get("string_value")
    if raw is None:
        if default is None:
            raise ValueError(f"model config parameter '{key}' is missing")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"model config parameter '{key}' must be an integer, received {raw!r}"
        ) from None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _request_error(message: str):
    """A per-request error with status INVALID_ARGUMENT (the caller's fault, not ours).

    Without a code the python backend answers INTERNAL, which reads as a server fault to
    clients, retry policies and alerting.
    """
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # stubs older than the TritonError codes
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class TritonPythonModel:
    """Runs the exported ONNX graph for Triton's python backend."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.graph_kind = params.get(PARAM_GRAPH_KIND, {}).get("string_value", "")
        if self.graph_kind not in (GRAPH_RERANK, GRAPH_RETRIEVE):
            raise ValueError(
                f"model config parameter '{PARAM_GRAPH_KIND}' must be '{GRAPH_RERANK}' or "
                f"'{GRAPH_RETRIEVE}', received {self.graph_kind!r}"
            )
        self.id_kind = params.get(PARAM_ID_KIND, {}).get("string_value", "index")
        if self.id_kind not in ID_KINDS:
            raise ValueError(f"model config parameter '{PARAM_ID_KIND}' must be one of "
                             f"{ID_KINDS}, received {self.id_kind!r}")
        self.pad = {"int": PAD_INT, "str": PAD_STR}.get(self.id_kind, PAD_ID)
        self.k = _int_param(params, PARAM_K)
        self.max_candidates = _int_param(params, PARAM_MAX_CANDIDATES, 10_000)
        self.max_exclude = _int_param(params, PARAM_MAX_EXCLUDE, 10_000)
        threads = _int_param(params, PARAM_INTRA_OP_THREADS, 1)

        inputs = config["input"]
        names = [i["name"] for i in inputs]
        if len(names) not in (2, 3) or (len(names) == 3 and names[2] not in SETTINGS):
            raise ValueError(f"expected the inputs (user, id list[, one of {SETTINGS}]) in "
                             f"the model config, found {names}")
        self.user_name, self.list_name = names[:2]
        self.setting_name = names[2] if len(names) == 3 else None
        self.outputs = [
            (out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
            for out in config["output"]
        ]

        onnx_file = params.get(PARAM_ONNX_FILE, {}).get("string_value") or DEFAULT_ONNX_FILE
        path = os.path.join(args["model_repository"], str(args["model_version"]), onnx_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No arena: onnxruntime's CPU arena keeps the peak of the largest batch forever
        # (+96 MB after legal 64 x 10,000 reranks; +0 without it, no measured latency cost).
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = {i.name for i in self.session.get_inputs()}
        for name in names:
            if name not in graph_inputs:
                raise ValueError(
                    f"input '{name}' of the model config is not an input of {path}; "
                    f"the graph has {sorted(graph_inputs)}"
                )
        self.output_names = [name for name, _ in self.outputs]

    def _parse(self, request) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(users [b], id list [b, n], setting [b] or None) of one request, or RequestError."""
        user_tensor = pb_utils.get_input_tensor_by_name(request, self.user_name)
        if user_tensor is None:
            raise RequestError(f"input '{self.user_name}' is missing")
        users = self._ids(user_tensor, self.user_name)
        # The config declares dims [1] without reshape: a request's users are [b, 1].
        if users.ndim != 2 or users.shape[1] != 1 or users.shape[0] < 1:
            raise RequestError(
                f"input '{self.user_name}' must have shape [batch, 1] with batch >= 1; "
                f"received shape {list(users.shape)}"
            )
        users = users[:, 0]
        batch = users.shape[0]

        return users, self._id_list(request, batch), self._setting(request, batch)

    def _setting(self, request, batch: int) -> np.ndarray | None:
        """The request's ``nprobe`` / ``rescore`` [b] (0 when left out); None if no such input.

        Values are the graph's business, as on the onnxruntime backend: <= 0 is the
        exported default, a value above the version's maximum is clamped to it.
        """
        name = self.setting_name
        if name is None:
            return None
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.zeros(batch, np.int64)
        values = _to_numpy(tensor)
        if values.dtype.kind not in "iu":
            raise RequestError(f"input '{name}' must be INT64, received {values.dtype}")
        if values.shape != (batch, 1):
            raise RequestError(f"input '{name}' must have shape [batch={batch}, 1]; "
                               f"received shape {list(values.shape)}")
        return values[:, 0].astype(np.int64)

    def _id_list(self, request, batch: int) -> np.ndarray:
        """The request's candidates (rerank) or exclusions (retrieve) [b, n]."""
        list_tensor = pb_utils.get_input_tensor_by_name(request, self.list_name)
        rerank = self.graph_kind == GRAPH_RERANK
        if list_tensor is None:
            if rerank:
                raise RequestError(f"input '{self.list_name}' is missing")
            return self._padding((batch, 0))
        ids = self._ids(list_tensor, self.list_name)
        if ids.ndim != 2 or ids.shape[0] != batch:
            raise RequestError(
                f"input '{self.list_name}' must have shape [batch={batch}, n]; "
                f"received shape {list(ids.shape)}"
            )
        count = ids.shape[1]
        if rerank and not 1 <= count <= self.max_candidates:
            raise RequestError(
                f"input '{self.list_name}' has {count} candidates: expected between 1 "
                f"and {self.max_candidates}"
            )
        if not rerank and count > self.max_exclude:
            raise RequestError(
                f"input '{self.list_name}' has {count} ids: expected at most {self.max_exclude}"
            )
        return ids

    def _ids(self, tensor, name: str) -> np.ndarray:
        """The tensor as int64 (INT64 ids) or str (BYTES ids, UTF-8) numpy array."""
        values = _to_numpy(tensor)
        if self.id_kind == "str":
            if values.dtype != np.object_:
                raise RequestError(f"input '{name}' must be BYTES, received {values.dtype}")
            try:
                return np.vectorize(_text, otypes=[object])(values) if values.size else \
                    values.astype(object)
            except UnicodeDecodeError as e:
                raise RequestError(f"input '{name}' holds an id that is not UTF-8: {e}") from None
        if values.dtype.kind not in "iu":
            raise RequestError(f"input '{name}' must be INT64, received {values.dtype}")
        return values.astype(np.int64, copy=False)

    def _padding(self, shape: tuple[int, int]) -> np.ndarray:
        if self.id_kind == "str":
            return np.full(shape, PAD_STR, dtype=object)
        return np.full(shape, self.pad, dtype=np.int64)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []
        for index, request in enumerate(requests):
            try:
                good.append((index, *self._parse(request)))
            except RequestError as e:
                responses[index] = pb_utils.InferenceResponse(error=_request_error(str(e)))
        if not good:
            return responses

        rows = sum(users.shape[0] for _, users, _, _ in good)
        try:
            results = self.session.run(self.output_names, self._feed(good, rows))
        except Exception as e:  # noqa: BLE001  (every good request gets the failure)
            error = pb_utils.TritonError(f"onnxruntime failed on a batch of {rows} rows: {e}")
            for index, *_ in good:
                responses[index] = pb_utils.InferenceResponse(error=error)
            return responses

        row = 0
        for index, users, *_ in good:
            end = row + users.shape[0]
            tensors = [
                _to_triton(name, result[row:end].astype(dtype, copy=False))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            row = end
        return responses

    def _feed(self, good: list, rows: int) -> dict[str, np.ndarray]:
        """One onnxruntime feed for every good request, id lists padded to one width."""
        width = max(1, max(ids.shape[1] for _, _, ids, _ in good))
        id_batch = self._padding((rows, width))
        row = 0
        for _, users, ids, _ in good:
            id_batch[row : row + ids.shape[0], : ids.shape[1]] = ids
            row += users.shape[0]
        feed = {self.user_name: np.concatenate([users for _, users, _, _ in good]),
                self.list_name: id_batch}
        if self.setting_name is not None:
            feed[self.setting_name] = np.concatenate([setting for *_, setting in good])
        return feed

    def finalize(self) -> None:
        self.session = None
