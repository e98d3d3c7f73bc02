"""Thin adapters over tritonclient: the only code that differs between protocols.

Each adapter offers ``get_config() -> dict`` (the raw ``as_json`` answer), ``infer(inputs,
outputs) -> dict[str, np.ndarray]`` and ``close()``, and raises only `RecommenderError`s
(tritonclient exceptions are mapped by `to_client_error` and chained).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.errors import (
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    RecommenderError,
    ServerUnavailableError,
)

PROTOCOLS = ("grpc", "http")

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "503"}
_NOT_FOUND = {"StatusCode.NOT_FOUND", "404"}
_NOT_FOUND_TEXT = ("unknown model", "is not found", "is not ready")


class Transport(Protocol):
    """What the clients need from a protocol."""

    def get_config(self) -> dict[str, Any]: ...

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The async counterpart of `Transport`."""

    async def get_config(self) -> dict[str, Any]: ...

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


def check_protocol(protocol: str) -> str:
    """Returns the protocol or raises InvalidRequestError naming the valid ones."""
    if protocol not in PROTOCOLS:
        raise InvalidRequestError(
            f"Invalid value received for argument `protocol`. Expected one of {PROTOCOLS}. "
            f"Received: protocol={protocol!r}"
        )
    return protocol


def strip_scheme(url: str) -> str:
    """tritonclient wants ``host:port``; accept ``http://host:port`` too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    return url


def to_client_error(error: BaseException, what: str) -> RecommenderError:
    """Maps a tritonclient or socket error to the client's exception tree.

    Args:
        error: The exception raised by tritonclient or the HTTP library.
        what: What was being done, for the message (e.g. "model 'mf': infer").
    """
    if isinstance(error, RecommenderError):
        return error
    if isinstance(error, InferenceServerException):
        status = error.status()
        message = f"{what}: {error.message()}"
        text = (error.message() or "").lower()
        if status in _UNAVAILABLE:
            return ServerUnavailableError(message, status=status)
        if status in _NOT_FOUND or any(t in text for t in _NOT_FOUND_TEXT):
            return ModelNotFoundError(message, status=status)
        return InferenceError(message, status=status)
    if isinstance(error, TimeoutError):
        return InferenceError(f"{what}: timed out ({error})", status="timeout")
    if isinstance(error, OSError):  # connection refused / reset from the HTTP library
        return ServerUnavailableError(f"{what}: {error}", status=type(error).__name__)
    return InferenceError(f"{what}: {error}")


def _infer_inputs(module: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    result = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        result.append(tensor)
    return result


class GrpcTransport:
    """Sync gRPC adapter."""

    def __init__(self, url: str, model_name: str, model_version: str, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self._client = grpcclient.InferenceServerClient(strip_scheme(url))
        self._model = (model_name, model_version)
        self._timeout = timeout

    def get_config(self) -> dict[str, Any]:
        try:
            return self._client.get_model_config(
                *self._model, as_json=True, client_timeout=self._timeout
            )
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: config") from error

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        try:
            result = self._client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n) for n in outputs],
                client_timeout=self._timeout,
            )
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: infer") from error
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        self._client.close()


class HttpTransport:
    """Sync HTTP adapter."""

    def __init__(self, url: str, model_name: str, model_version: str, timeout: float) -> None:
        import tritonclient.http as httpclient

        self._module = httpclient
        self._client = httpclient.InferenceServerClient(
            strip_scheme(url), connection_timeout=timeout, network_timeout=timeout
        )
        self._model = (model_name, model_version)

    def get_config(self) -> dict[str, Any]:
        try:
            return self._client.get_model_config(*self._model)
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: config") from error

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        try:
            result = self._client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n, binary_data=True) for n in outputs],
            )
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: infer") from error
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        self._client.close()


class AsyncGrpcTransport:
    """Async gRPC adapter over ``tritonclient.grpc.aio``."""

    def __init__(self, url: str, model_name: str, model_version: str, timeout: float) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self._module = grpcclient
        self._client = aioclient.InferenceServerClient(strip_scheme(url))
        self._model = (model_name, model_version)
        self._timeout = timeout

    async def get_config(self) -> dict[str, Any]:
        try:
            return await self._client.get_model_config(
                *self._model, as_json=True, client_timeout=self._timeout
            )
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: config") from error

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        try:
            result = await self._client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n) for n in outputs],
                client_timeout=self._timeout,
            )
        except Exception as error:
            raise to_client_error(error, f"model {self._model[0]!r}: infer") from error
        return {name: result.as_numpy(name) for name in outputs}

    async def close(self) -> None:
        await self._client.close()


def make_transport(
    url: str, model_name: str, *, protocol: str, model_version: str, timeout: float
) -> Transport:
    """Builds the sync adapter for ``protocol`` ("grpc" or "http")."""
    cls = GrpcTransport if check_protocol(protocol) == "grpc" else HttpTransport
    return cls(url, model_name, model_version, timeout)
