"""Thin adapters over tritonclient: the only code that differs between protocols.

Each adapter offers ``get_config() -> dict`` (the raw ``as_json`` answer), ``infer(inputs,
outputs) -> InferAnswer`` (the outputs by name, plus the ``model_version`` that answered)
and ``close()``, and raises only `RecommenderError`s
(tritonclient exceptions are mapped by `to_client_error` and chained). The gRPC adapters
also take ``timeout=`` per call (``accepts_timeout``): the clients pass the time left
before the call's deadline, so an attempt in flight never outlives it.

TLS and request headers are described once by `ConnectionOptions` (validated here, used by
every client and adapter); TLS itself is tritonclient's (gRPC channel credentials, or
geventhttpclient's SSL context for HTTP), never reimplemented.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.errors import (
    AuthenticationError,
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    RecommenderError,
    ServerUnavailableError,
    TlsHandshakeError,
)

PROTOCOLS = ("grpc", "http")

# 502/504 come from a load balancer in front of Triton (the replica died or timed out
# mid-request); Triton itself never sends them. Inference reads only, so a retry is safe.
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "502", "503", "504"}
_NOT_FOUND = {"StatusCode.NOT_FOUND", "404"}
_NOT_FOUND_TEXT = ("unknown model", "is not found", "is not ready")
_AUTH = {"StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED", "401", "403"}
_TLS_TEXT = ("handshake failed", "certificate_verify_failed", "ssl_error",
             "is not in peer certificate")
_CLOSED_TEXT = "socket closed"
_REFUSED_TEXT = ("protocol is restricted",)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")  # an HTTP token, lower case
_TLS_FILES = ("root_certificates", "private_key", "certificate_chain")

PathLike = str | os.PathLike[str]


def _check_file(argument: str, value: PathLike | None) -> str | None:
    """Returns ``value`` as str after checking it names a readable file (None passes)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InvalidRequestError(
            f"Invalid value received for argument `{argument}`. Expected the path of a PEM "
            f"file. Received: {argument}={value!r}"
        )
    path = Path(value)
    if not path.is_file():
        raise InvalidRequestError(
            f"Invalid value received for argument `{argument}`: the file {str(path)!r} does "
            "not exist (or is not a file)."
        )
    if not os.access(path, os.R_OK):
        raise InvalidRequestError(
            f"Invalid value received for argument `{argument}`: the file {str(path)!r} is "
            "not readable."
        )
    return str(path)


def _check_headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Validates ``headers``; returns them as ``(lower-case name, value)`` pairs."""
    if headers is None:
        return ()
    if not isinstance(headers, Mapping):
        raise InvalidRequestError(
            "Invalid value received for argument `headers`. Expected a mapping of header "
            f"name to value (str to str). Received: {type(headers).__name__}"
        )
    pairs: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower() if isinstance(name, str) else name
        if not isinstance(key, str) or not _HEADER_NAME.match(key):
            raise InvalidRequestError(
                "Invalid value received for argument `headers`: header names must be "
                f"non-empty HTTP tokens (letters, digits, '-', ...). Received: {name!r}"
            )
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise InvalidRequestError(
                f"Invalid value received for argument `headers`: the value of {name!r} must "
                "be a str without CR, LF or NUL."
            )
        if key in pairs:
            raise InvalidRequestError(
                f"Invalid value received for argument `headers`: {name!r} is given twice "
                "(header names are case-insensitive)."
            )
        pairs[key] = value
    return tuple(pairs.items())


@dataclass(frozen=True)
class ConnectionOptions:
    """TLS and per-request headers of a connection, validated on construction.

    Every client (`RecommenderClient`, `AsyncRecommenderClient`, `ModelAdmin`) builds one
    with `ConnectionOptions.for_url` and hands it to its tritonclient adapter.

    Args:
        ssl: Connect with TLS. Certificates are verified against ``root_certificates``
            (or the system's CAs); the host name is always checked.
        root_certificates: Path of a PEM CA bundle that signed the server's certificate.
        private_key: Path of the client's PEM private key (mutual TLS).
        certificate_chain: Path of the client's PEM certificate chain (mutual TLS).
        headers: Sent with every request (HTTP headers / gRPC metadata), e.g.
            ``{"authorization": "Bearer ..."}`` for an authenticating proxy. Names are
            case-insensitive and stored lower case (gRPC metadata requires it).

    Raises:
        InvalidRequestError: A certificate file is missing (the message names the path),
            only one of ``private_key`` / ``certificate_chain`` is given, a certificate
            option is given without ``ssl``, or a header is malformed.

    Example:
        >>> ConnectionOptions(headers={"Authorization": "Bearer t"}).header_dict()
        {'authorization': 'Bearer t'}
    """

    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.ssl, bool):
            raise InvalidRequestError(
                "Invalid value received for argument `ssl`. Expected a bool. "
                f"Received: ssl={self.ssl!r}"
            )
        for name in _TLS_FILES:
            object.__setattr__(self, name, _check_file(name, getattr(self, name)))
        given = [name for name in _TLS_FILES if getattr(self, name) is not None]
        if given and not self.ssl:
            raise InvalidRequestError(
                f"Invalid value received for argument `{given[0]}`: certificates are only "
                "used with TLS. Pass ssl=True (or an https:// url), or drop "
                f"{', '.join(given)}."
            )
        if (self.private_key is None) != (self.certificate_chain is None):
            raise InvalidRequestError(
                "Invalid value received for arguments `private_key` and `certificate_chain`: "
                "mutual TLS needs both (the client's key and its certificate chain). "
                f"Received: private_key={self.private_key!r}, "
                f"certificate_chain={self.certificate_chain!r}"
            )
        headers = self.headers
        if not isinstance(headers, Mapping) and headers is not None:
            try:
                headers = dict(headers)
            except (TypeError, ValueError):
                pass  # _check_headers names the wrong type
        object.__setattr__(self, "headers", _check_headers(headers))

    @classmethod
    def for_url(
        cls,
        url: str,
        *,
        ssl: bool = False,
        root_certificates: PathLike | None = None,
        private_key: PathLike | None = None,
        certificate_chain: PathLike | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ConnectionOptions:
        """Builds the options for ``url``: an ``https://`` url turns on ``ssl``.

        Raises:
            InvalidRequestError: As the class, or ``ssl=True`` with an ``http://`` url.
        """
        if isinstance(url, str) and url.startswith("https://"):
            ssl = True
        elif isinstance(url, str) and url.startswith("http://") and ssl is True:
            raise InvalidRequestError(
                f"Invalid value received for argument `url`: {url!r} says plain http:// but "
                "ssl=True. Use an https:// url or a bare host:port."
            )
        return cls(
            ssl=ssl,
            root_certificates=root_certificates,  # type: ignore[arg-type]  (checked)
            private_key=private_key,  # type: ignore[arg-type]
            certificate_chain=certificate_chain,  # type: ignore[arg-type]
            headers=headers,  # type: ignore[arg-type]  (normalized in __post_init__)
        )

    def header_dict(self) -> dict[str, str] | None:
        """The headers as tritonclient's ``headers=`` argument (None when there are none)."""
        return dict(self.headers) if self.headers else None

    def grpc_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``tritonclient.grpc[.aio].InferenceServerClient``."""
        return {
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }

    def http_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``tritonclient.http.InferenceServerClient``.

        ``ssl_options`` are geventhttpclient's: ``ca_certs`` (else its default CA bundle),
        ``certfile`` / ``keyfile`` for mutual TLS. Host names are always checked
        (``insecure`` stays False).
        """
        if not self.ssl:
            return {}
        options: dict[str, str] = {}
        if self.root_certificates is not None:
            options["ca_certs"] = self.root_certificates
        if self.certificate_chain is not None and self.private_key is not None:
            options["certfile"] = self.certificate_chain
            options["keyfile"] = self.private_key
        return {"ssl": True, "ssl_options": options, "insecure": False}

    def describe(self) -> str:
        """``"TLS"`` or ``"plaintext"``, for error messages."""
        return "TLS" if self.ssl else "plaintext"


PLAINTEXT = ConnectionOptions()


class Transport(Protocol):
    """What the clients need from a protocol.

    An adapter whose ``accepts_timeout`` attribute is True also takes a keyword
    ``timeout`` (seconds, or None) on ``get_config`` and ``infer``: the time left before
    the call's deadline. Other adapters (e.g. a test double) are called without it.
    """

    def get_config(self) -> dict[str, Any]: ...

    # Returns the outputs by name; an `InferAnswer` also tells the answering version.
    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The async counterpart of `Transport`."""

    async def get_config(self) -> dict[str, Any]: ...

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]: ...

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
        if status in _AUTH or any(t in text for t in _REFUSED_TEXT):  # retrying is useless
            return AuthenticationError(message, status=status)
        if status in _UNAVAILABLE:
            return ServerUnavailableError(message, status=status)
        if status in _NOT_FOUND or any(t in text for t in _NOT_FOUND_TEXT):
            return ModelNotFoundError(message, status=status)
        return InferenceError(message, status=status)
    if isinstance(error, TimeoutError):
        return InferenceError(f"{what}: timed out ({error})", status="timeout")
    if isinstance(error, OSError) or _closed_before_answer(error):
        # Refused, reset, or a keep-alive connection the server or proxy closed before
        # answering (nginx does on a reload): nothing was answered, so a retry is safe.
        return ServerUnavailableError(f"{what}: {error}", status=type(error).__name__)
    return InferenceError(f"{what}: {error}")


def _closed_before_answer(error: BaseException) -> bool:
    """geventhttpclient's HTTPConnectionClosed (matched by name: no import needed here)."""
    return any(cls.__name__ == "HTTPConnectionClosed" for cls in type(error).__mro__)


def connection_error(
    error: BaseException, what: str, options: ConnectionOptions
) -> RecommenderError:
    """`to_client_error`, plus a hint when TLS settings are the likely cause.

    gRPC reports TLS mismatches as UNAVAILABLE: a failed handshake (wrong or missing CA,
    wrong host name) or a socket the server closed at once (plaintext client on a TLS
    port, or no client certificate for a mutual-TLS server). These stay
    `ServerUnavailableError` (bounded retries) with a hint naming the option to check; a
    failed handshake is the subclass `TlsHandshakeError` (waiting cannot fix it), a closed
    socket stays ambiguous (a server shutting down closes sockets too).

    Example:
        >>> from tritonclient.utils import InferenceServerException
        >>> error = InferenceServerException(
        ...     "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", status="StatusCode.UNAVAILABLE")
        >>> type(connection_error(error, "config", ConnectionOptions(ssl=True))).__name__
        'TlsHandshakeError'
    """
    mapped = to_client_error(error, what)
    if not isinstance(mapped, ServerUnavailableError) or mapped is error:
        return mapped
    text = str(mapped).lower()
    if any(word in text for word in _TLS_TEXT):
        hint = ("TLS handshake failed: check that `root_certificates` holds the CA that "
                "signed the server's certificate and that the url's host is one of its names")
        return TlsHandshakeError(f"{mapped} ({hint})", status=mapped.status)
    if _CLOSED_TEXT in text and not options.ssl:
        hint = "connected in plaintext: if the server uses TLS, pass ssl=True"
    elif _CLOSED_TEXT in text:
        hint = ("if the server requires client certificates (mutual TLS), pass "
                "`private_key` and `certificate_chain`")
    else:
        return mapped
    return ServerUnavailableError(f"{mapped} ({hint})", status=mapped.status)


class InferAnswer(dict):
    """An inference answer: output name -> numpy array, plus the version that answered.

    Attributes:
        model_version: The version Triton says answered (from the response's
            ``model_version``); ``""`` when the transport cannot tell (e.g. a test double
            returning a plain dict: the clients then read ``""`` too).

    Example:
        >>> answer = InferAnswer({"num_results": np.array([[2]])}, model_version="3")
        >>> answer.model_version, answer["num_results"].tolist()
        ('3', [[2]])
    """

    def __init__(self, outputs: Mapping[str, Any] = (), model_version: str = "") -> None:
        super().__init__(outputs)
        self.model_version = model_version


def answer_version(answer: Mapping[str, Any]) -> str:
    """The ``model_version`` of an answer (``""`` for a plain mapping)."""
    return str(getattr(answer, "model_version", "") or "")


def _result_version(result: Any) -> str:
    """The answering version of a tritonclient InferResult (gRPC message or HTTP dict)."""
    try:
        response = result.get_response()
    except AttributeError:  # a test double without a response
        return ""
    if isinstance(response, Mapping):
        return str(response.get("model_version", "") or "")
    return str(getattr(response, "model_version", "") or "")


def _answer(result: Any, outputs: Sequence[str]) -> InferAnswer:
    return InferAnswer({name: result.as_numpy(name) for name in outputs},
                       _result_version(result))


def _infer_inputs(module: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    result = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        result.append(tensor)
    return result


class _Adapter:
    """What every adapter shares: the model, the options and error mapping."""

    _model: tuple[str, str]
    _options: ConnectionOptions
    accepts_timeout = False

    def _mapped(self, error: BaseException, action: str) -> RecommenderError:
        return connection_error(error, f"model {self._model[0]!r}: {action}", self._options)


class GrpcTransport(_Adapter):
    """Sync gRPC adapter (tritonclient's gRPC client: safe to share between threads)."""

    accepts_timeout = True

    def __init__(
        self,
        url: str,
        model_name: str,
        model_version: str,
        timeout: float,
        options: ConnectionOptions = PLAINTEXT,
    ) -> None:
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self._client = grpcclient.InferenceServerClient(
            strip_scheme(url), **options.grpc_kwargs()
        )
        self._model = (model_name, model_version)
        self._timeout = timeout
        self._options = options
        self._headers = options.header_dict()

    def get_config(self, *, timeout: float | None = None) -> dict[str, Any]:
        try:
            return self._client.get_model_config(
                *self._model, headers=self._headers, as_json=True,
                client_timeout=_shorter(self._timeout, timeout),
            )
        except Exception as error:
            raise self._mapped(error, "config") from error

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> InferAnswer:
        try:
            result = self._client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n) for n in outputs],
                client_timeout=_shorter(self._timeout, timeout),
                headers=self._headers,
            )
        except Exception as error:
            raise self._mapped(error, "infer") from error
        return _answer(result, outputs)

    def close(self) -> None:
        self._client.close()


class HttpTransport(_Adapter):
    """Sync HTTP adapter.

    Not thread-safe: tritonclient's HTTP client (geventhttpclient) must be used by one
    thread. Its timeouts are fixed per connection, so it takes no per-call ``timeout``.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        model_version: str,
        timeout: float,
        options: ConnectionOptions = PLAINTEXT,
    ) -> None:
        import tritonclient.http as httpclient

        self._module = httpclient
        self._client = httpclient.InferenceServerClient(
            strip_scheme(url),
            connection_timeout=timeout,
            network_timeout=timeout,
            **options.http_kwargs(),
        )
        self._model = (model_name, model_version)
        self._options = options
        self._headers = options.header_dict()

    def get_config(self) -> dict[str, Any]:
        try:
            return self._client.get_model_config(*self._model, headers=self._headers)
        except Exception as error:
            raise self._mapped(error, "config") from error

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> InferAnswer:
        try:
            result = self._client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n, binary_data=True) for n in outputs],
                headers=self._headers,
            )
        except Exception as error:
            raise self._mapped(error, "infer") from error
        return _answer(result, outputs)

    def close(self) -> None:
        self._client.close()


class AsyncGrpcTransport(_Adapter):
    """Async gRPC adapter over ``tritonclient.grpc.aio``.

    A ``grpc.aio`` channel belongs to the event loop it was made in, so the channel is
    made on first use, inside the running loop: the adapter (and its client) can be built
    in sync code and then used under ``asyncio.run(...)``. It stays bound to that loop;
    using it from another loop (or after `close`) raises `RecommenderError` at once,
    before anything is sent. Not thread-safe (asyncio objects are not).
    """

    accepts_timeout = True

    def __init__(
        self,
        url: str,
        model_name: str,
        model_version: str,
        timeout: float,
        options: ConnectionOptions = PLAINTEXT,
    ) -> None:
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self._url = strip_scheme(url)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._model = (model_name, model_version)
        self._timeout = timeout
        self._options = options
        self._headers = options.header_dict()

    def _connected(self) -> Any:
        """The tritonclient aio client of the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RecommenderError(f"model {self._model[0]!r}: the async client is closed.")
        if self._client is None:
            import tritonclient.grpc.aio as aioclient

            self._client = aioclient.InferenceServerClient(
                self._url, **self._options.grpc_kwargs()
            )
            self._loop = loop
        elif loop is not self._loop:
            raise RecommenderError(
                f"model {self._model[0]!r}: this async client was first used in another "
                "event loop, and its gRPC channel belongs to that loop. Make one client per "
                "event loop (e.g. inside the coroutine given to asyncio.run)."
            )
        return self._client

    async def get_config(self, *, timeout: float | None = None) -> dict[str, Any]:
        client = self._connected()
        try:
            return await client.get_model_config(
                *self._model, headers=self._headers, as_json=True,
                client_timeout=_shorter(self._timeout, timeout),
            )
        except Exception as error:
            raise self._mapped(error, "config") from error

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> InferAnswer:
        client = self._connected()
        try:
            result = await client.infer(
                self._model[0],
                _infer_inputs(self._module, inputs),
                model_version=self._model[1],
                outputs=[self._module.InferRequestedOutput(n) for n in outputs],
                client_timeout=_shorter(self._timeout, timeout),
                headers=self._headers,
            )
        except Exception as error:
            raise self._mapped(error, "infer") from error
        return _answer(result, outputs)

    async def close(self) -> None:
        """Closes the channel (if one was made); later calls raise `RecommenderError`."""
        client, loop = self._client, self._loop
        self._closed, self._client, self._loop = True, None, None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()  # a channel of another (finished) loop cannot be awaited


def _shorter(timeout: float, limit: float | None) -> float:
    """The per-call timeout: ``timeout``, cut to ``limit`` (the deadline's rest) if given."""
    return timeout if limit is None else max(0.0, min(timeout, limit))


def make_transport(
    url: str,
    model_name: str,
    *,
    protocol: str,
    model_version: str,
    timeout: float,
    options: ConnectionOptions = PLAINTEXT,
) -> Transport:
    """Builds the sync adapter for ``protocol`` ("grpc" or "http")."""
    cls = GrpcTransport if check_protocol(protocol) == "grpc" else HttpTransport
    return cls(url, model_name, model_version, timeout, options)
