"""One replica's side of a rollout, over Triton's gRPC repository API (explicit mode).

Triton 2.51 loads a chosen version when `load_model` gets a config override whose
``version_policy`` is ``{"specific": {"versions": [N]}}``: the override is the model's
served config (from `get_model_config`) with only that field changed. Versions left out
of the policy are unloaded once the new one is ready.

Example:
    >>> config = {"name": "ro", "version_policy": {"latest": {"num_versions": 1}}}
    >>> pinned_config(config, 2)["version_policy"]
    {'specific': {'versions': [2]}}
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from export.errors import ExportError
from export.rollout.canary import CanaryCase, answer_mismatch

RPC_TIMEOUT_S = 10.0


def connect(url: str) -> Any:
    """A ``tritonclient.grpc`` client for ``host:port``."""
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def pinned_config(config: dict[str, Any], version: int) -> dict[str, Any]:
    """``config`` with its version policy set to serve exactly ``version``."""
    return {**config, "version_policy": {"specific": {"versions": [int(version)]}}}


def ready_versions(client: Any, model: str) -> list[int]:
    """Versions of ``model`` that are READY on the replica (from its repository index)."""
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return sorted(int(m["version"]) for m in index
                  if m.get("name") == model and m.get("state") == "READY" and m.get("version"))


def load_version(client: Any, model: str, version: int, timeout: float | None = None) -> None:
    """Asks the replica to serve ``version`` of ``model`` (blocks until Triton answers).

    ``timeout`` bounds the load request (seconds; None: no bound). It matters: a python
    backend version without ``model.py`` is never answered by tritonserver 2.51.

    Raises:
        ExportError: The server refused the config, the version failed to load (the
            message holds Triton's reason) or the load was not answered in time.
    """
    from tritonclient.utils import InferenceServerException

    try:
        config = client.get_model_config(model, as_json=True, client_timeout=RPC_TIMEOUT_S)
        client.load_model(model, config=json.dumps(pinned_config(config["config"], version)),
                          client_timeout=timeout)
    except InferenceServerException as error:
        raise ExportError(f"loading {model!r} version {version} failed: {error.message()}") \
            from error


def wait_serving(client: Any, model: str, version: int, timeout: float) -> float:
    """Waits until ``version`` is ready; returns the seconds waited (ExportError on timeout)."""
    started = time.monotonic()
    while True:
        try:
            if client.is_model_ready(model, str(version)):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001  (a replica restarting answers with errors)
            pass
        if time.monotonic() - started > timeout:
            raise ExportError(f"{model!r} version {version} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _as_served(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:  # BYTES come back as bytes; the graph answers str
        return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v)(array)
    return array


def ask(client: Any, model: str, version: int | None, case: CanaryCase) -> tuple[str, dict]:
    """Sends one canary request to ``version`` (None: the server's choice).

    Returns:
        (the version that answered, its outputs named like ``case.expected``).
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in case.inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(model, inputs, model_version="" if version is None else str(version),
                          client_timeout=RPC_TIMEOUT_S)
    outputs = {name: _as_served(result.as_numpy(name)) for name in case.expected}
    return result.get_response().model_version, outputs


def canary_failure(client: Any, model: str, version: int, cases: list[CanaryCase]) -> str:
    """'' when the replica answers every case like onnxruntime, else the first problem."""
    from tritonclient.utils import InferenceServerException

    for number, case in enumerate(cases):
        try:
            served, outputs = ask(client, model, version, case)
        except InferenceServerException as error:
            return f"canary request {number} failed: {error.message()}"
        if served != str(version):
            return f"canary request {number} answered by version {served}, not {version}"
        problem = answer_mismatch(case.expected, outputs)
        if problem:
            return f"canary request {number}: {problem}"
    return ""
