"""Managing models on a server started with ``--model-control-mode=explicit``.

For hot updates: publish a new version folder, `ModelAdmin.load_model` (Triton reloads
the model and serves the versions its version policy selects), then
`ModelAdmin.wait_until_ready` for the new version before sending traffic to it.

`ModelAdmin.wait_until_ready` polls through what waiting can fix (the server restarting
or unreachable, the model loading) but raises at once what it cannot: refused
credentials (`AuthenticationError`: gRPC UNAUTHENTICATED / PERMISSION_DENIED, HTTP
401 / 403, a restricted-protocol refusal) and failed TLS handshakes
(`TlsHandshakeError`).

Example (needs a running server)::

    from client.admin import ModelAdmin
    with ModelAdmin("localhost:8001") as admin:
        admin.load_model("mf_rerank")
        admin.wait_until_ready("mf_rerank", version="2", timeout=60)
        [m.name for m in admin.list_models() if m.state == "READY"]
    # -> ['mf_rerank']
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from tritonclient.utils import InferenceServerException

from client._transport import ConnectionOptions, check_protocol, connection_error, strip_scheme
from client.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    RecommenderError,
    TlsHandshakeError,
)

# Errors that waiting cannot fix: wait_until_ready raises them at once.
PERMANENT_ERRORS: tuple[type[RecommenderError], ...] = (
    AuthenticationError,
    TlsHandshakeError,
    InvalidRequestError,
)
_HTTP_REFUSED = (401, 403)


@dataclass(frozen=True)
class ModelStatus:
    """One row of the server's repository index (version and state may be empty)."""

    name: str
    version: str
    state: str
    reason: str


class ModelAdmin:
    """Load, unload, list and await models over gRPC or HTTP.

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint.
        protocol: ``"grpc"`` or ``"http"``.
        timeout: Seconds allowed per server call (a load may take a while).
        ssl: Connect with TLS (tritonclient's own; an ``https://`` url implies it).
            Server certificates are verified, host names checked.
        root_certificates: Path of a PEM CA bundle for the server's certificate
            (default: the system's CAs).
        private_key: Path of the client's PEM key, for mutual TLS (with
            ``certificate_chain``).
        certificate_chain: Path of the client's PEM certificate chain, for mutual TLS.
        headers: Headers (gRPC metadata) sent with every request, e.g.
            ``{"authorization": "Bearer ..."}`` for an authenticating proxy or the
            server's ``--grpc-restricted-protocol`` header.

    Threads: over gRPC one admin may be shared by threads (tritonclient's gRPC client is
    thread-safe for these unary calls); over HTTP it must not (tritonclient's HTTP
    client is not thread-safe): make one per thread.

    Raises:
        InvalidRequestError: An option is invalid (e.g. a certificate file is missing).

    Example:
        >>> admin = ModelAdmin("localhost:8000", protocol="http", timeout=5.0)  # no I/O yet
        >>> admin.wait_until_ready("mf_rerank", timeout=30)  # doctest: +SKIP
        0.42
        >>> admin.close()
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: str = "grpc",
        timeout: float = 60.0,
        ssl: bool = False,
        root_certificates: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        certificate_chain: str | os.PathLike[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.protocol = check_protocol(protocol)
        self.timeout = timeout
        self.connection = ConnectionOptions.for_url(
            url,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            headers=headers,
        )
        headers_kwarg = {"headers": self.connection.header_dict()}
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._client: Any = grpcclient.InferenceServerClient(
                strip_scheme(url), **self.connection.grpc_kwargs()
            )
            self._kwargs: dict[str, Any] = {"client_timeout": timeout, **headers_kwarg}
        else:
            import tritonclient.http as httpclient

            self._client = httpclient.InferenceServerClient(
                strip_scheme(url),
                connection_timeout=timeout,
                network_timeout=timeout,
                **self.connection.http_kwargs(),
            )
            self._kwargs = headers_kwarg

    def __enter__(self) -> ModelAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the underlying tritonclient."""
        self._client.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs, **self._kwargs)
        except Exception as error:
            raise connection_error(error, what, self.connection) from error

    def list_models(self) -> list[ModelStatus]:
        """Every model in the repository with its state (READY, UNAVAILABLE, ...)."""
        if self.protocol == "grpc":
            raw = self._call("repository index", self._client.get_model_repository_index,
                             as_json=True)
            rows = raw.get("models", [])
        else:
            rows = self._call("repository index", self._client.get_model_repository_index)
        return [
            ModelStatus(
                name=row.get("name", ""),
                version=str(row.get("version", "")),
                state=row.get("state", ""),
                reason=row.get("reason", ""),
            )
            for row in rows
        ]

    def load_model(self, model_name: str) -> None:
        """Loads (or reloads, picking up new versions) a model; returns once loaded.

        Raises:
            RecommenderError: The server refused or failed to load it.
        """
        self._call(f"load model {model_name!r}", self._client.load_model, model_name)

    def unload_model(self, model_name: str) -> None:
        """Unloads a model."""
        self._call(f"unload model {model_name!r}", self._client.unload_model, model_name)

    def is_model_ready(self, model_name: str, version: str = "") -> bool:
        """True when the model (or that version) is ready to serve.

        Raises:
            AuthenticationError: The server or a proxy refused the credentials (over
                HTTP too, where tritonclient alone would report a 401 as "not ready").
            TlsHandshakeError: The server's certificate is not trusted or names
                another host.
            RecommenderError: Any other failure (e.g. `ServerUnavailableError`).
        """
        _check_version(version)
        check = self._client.is_model_ready if self.protocol == "grpc" else self._http_ready
        return bool(self._call(f"model {model_name!r} ready", check, model_name, version))

    def _http_ready(
        self, model_name: str, version: str, headers: Mapping[str, str] | None = None
    ) -> bool:
        """HTTP readiness that tells "refused" (401/403) from "not ready".

        tritonclient's ``is_model_ready`` returns ``status == 200`` and so hides a refusal;
        this sends the same GET through its request helper (tritonclient 2.x ``_get``,
        which applies its plugins and headers) to see the status. Without that helper,
        tritonclient's own method is used.
        """
        get = getattr(self._client, "_get", None)
        if get is None:
            return bool(self._client.is_model_ready(model_name, version, headers=headers))
        uri = f"v2/models/{quote(model_name)}"
        uri += f"/versions/{version}/ready" if version else "/ready"
        response = get(request_uri=uri, headers=headers, query_params=None)
        text = _http_error_text(response)  # read the body in every case: the connection is reused
        if response.status_code in _HTTP_REFUSED:
            raise InferenceServerException(text, status=str(response.status_code))
        return response.status_code == 200

    def wait_until_ready(
        self,
        model_name: str,
        version: str = "",
        *,
        timeout: float = 60.0,
        interval: float = 0.25,
    ) -> float:
        """Polls until the model (version) is ready; returns the seconds waited.

        Errors that waiting can fix (server unreachable or restarting, model loading)
        are polled through until ``timeout``; errors that it cannot fix are raised at
        once (see `PERMANENT_ERRORS`).

        Raises:
            ModelNotFoundError: Not ready within ``timeout`` (the message carries the
                repository index's state and reason, and the last polling error).
            AuthenticationError: The credentials are refused (gRPC UNAUTHENTICATED or
                PERMISSION_DENIED, HTTP 401 or 403, a missing restricted-protocol
                header): at once, not after ``timeout``.
            TlsHandshakeError: The TLS handshake failed (untrusted certificate, wrong
                host name): at once.
            InvalidRequestError: ``version`` is not a version number as str.

        Example (needs a running server)::

            with ModelAdmin("localhost:8001") as admin:
                admin.wait_until_ready("mf_rerank", version="2", timeout=60)
            # -> 1.75
        """
        _check_version(version)
        start = time.monotonic()
        last_error: RecommenderError | None = None
        while True:
            try:
                if self.is_model_ready(model_name, version):
                    return time.monotonic() - start
            except PERMANENT_ERRORS:
                raise
            except RecommenderError as error:
                last_error = error  # the server may be restarting: poll until the deadline
            if time.monotonic() - start >= timeout:
                break
            time.sleep(interval)
        try:
            states = [f"{m.version or '?'}: {m.state} {m.reason}".strip()
                      for m in self.list_models() if m.name == model_name]
        except RecommenderError as error:
            states = [f"index unavailable ({error})"]
        label = f"{model_name!r}" + (f" version {version}" if version else "")
        last = f" Last polling error: {last_error}" if last_error is not None else ""
        raise ModelNotFoundError(
            f"Model {label} not ready after {timeout:g} s. Repository index: "
            f"{states or 'model not listed'}.{last}"
        )


def _check_version(version: Any) -> None:
    if not isinstance(version, str) or not (
        version == "" or (version.isascii() and version.isdigit())
    ):
        raise InvalidRequestError(
            "Invalid value received for argument `version`. Expected '' (the server's "
            f"choice) or a version number as str. Received: version={version!r}"
        )


def _http_error_text(response: Any) -> str:
    """The ``{"error": ...}`` text of a Triton HTTP error answer, else the raw body."""
    try:
        body = response.read().decode("utf-8", "replace")
    except Exception:  # a body that cannot be read still leaves the status to report
        body = ""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.strip() or f"HTTP {response.status_code}"
