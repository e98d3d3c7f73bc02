"""Unit tests of the connection options (TLS, headers): validation and what tritonclient gets.

No server: tritonclient's client classes are replaced by recorders, so these check the
exact constructor and per-call keyword arguments. The real TLS handshakes are in
tests/e2e/test_client_tls.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client import (
    AsyncRecommenderClient,
    AuthenticationError,
    InferenceError,
    InvalidRequestError,
    ModelAdmin,
    RecommenderClient,
    ServerUnavailableError,
    TlsHandshakeError,
)
from client._transport import (
    PLAINTEXT,
    AsyncGrpcTransport,
    ConnectionOptions,
    GrpcTransport,
    HttpTransport,
    connection_error,
)
from kmr import contract


@pytest.fixture()
def pem(tmp_path: Path) -> dict[str, Path]:
    """Three dummy PEM files (contents are not parsed by the options)."""
    files = {}
    for name in ("ca", "key", "chain"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("-----BEGIN X-----\n-----END X-----\n", encoding="utf-8")
    return files


class Recorder:
    """Stands in for a tritonclient InferenceServerClient; records every call."""

    instances: list[Recorder] = []

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url, self.kwargs = url, kwargs
        self.calls: list[tuple[str, dict[str, Any]]] = []
        Recorder.instances.append(self)

    def _record(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs))
        return _Index() if name == "get_model_repository_index" else _Result()

    def __getattr__(self, name: str) -> Any:
        if name in ("get_model_config", "infer", "load_model", "unload_model",
                    "is_model_ready", "get_model_repository_index"):
            return lambda *args, **kwargs: self._record(name, kwargs)
        raise AttributeError(name)

    def close(self) -> None:
        pass


class AsyncRecorder(Recorder):
    def __getattr__(self, name: str) -> Any:
        sync = super().__getattr__(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return sync(*args, **kwargs)

        return call

    async def close(self) -> None:  # type: ignore[override]
        pass


class _Index(list):
    """An empty repository index in both shapes: HTTP's list, gRPC's ``{"models": [...]}``."""

    def get(self, key: str, default: Any = None) -> list:
        return []


class _Result:
    def as_numpy(self, name: str) -> np.ndarray:
        return np.zeros((1, 1))


@pytest.fixture()
def recorders(monkeypatch) -> list[Recorder]:
    Recorder.instances = []
    monkeypatch.setattr(grpcclient, "InferenceServerClient", Recorder)
    monkeypatch.setattr(httpclient, "InferenceServerClient", Recorder)
    monkeypatch.setattr(aioclient, "InferenceServerClient", AsyncRecorder)
    return Recorder.instances


INPUTS = {contract.USER_ID: np.zeros((1, 1), np.int64)}


# -- validation ------------------------------------------------------------------------------
def test_missing_certificate_file_raises_invalid_request_naming_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    for make in (
        lambda: RecommenderClient("h:1", "m", ssl=True, root_certificates=missing),
        lambda: AsyncRecommenderClient("h:1", "m", ssl=True, root_certificates=str(missing)),
        lambda: ModelAdmin("h:1", protocol="http", ssl=True, root_certificates=missing),
    ):
        with pytest.raises(InvalidRequestError, match=re.escape(str(missing))) as info:
            make()
        assert "root_certificates" in str(info.value)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ssl": "yes"}, "Expected a bool. Received: ssl='yes'"),
        ({"root_certificates": "ca"}, "certificates are only used with TLS. Pass ssl=True"),
        ({"ssl": True, "private_key": "key"}, "mutual TLS needs both"),
        ({"ssl": True, "certificate_chain": "chain"}, "mutual TLS needs both"),
        ({"headers": ["authorization"]}, "Expected a mapping"),
        ({"headers": {"bad name": "x"}}, "non-empty HTTP tokens"),
        ({"headers": {"": "x"}}, "non-empty HTTP tokens"),
        ({"headers": {"a": "x\r\nInjected: 1"}}, "without CR, LF or NUL"),
        ({"headers": {"a": 1}}, "the value of 'a' must be a str"),
        ({"headers": {"X-Token": "a", "x-token": "b"}}, "'x-token' is given twice"),
    ],
)
def test_connection_options_raise_invalid_request_when_an_option_is_bad(
    pem, options, message
) -> None:
    options = {k: (pem[v] if k != "headers" and v in pem else v) for k, v in options.items()}
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        ConnectionOptions.for_url("h:1", **options)


def test_https_url_implies_ssl_and_http_url_conflicts_with_ssl() -> None:
    assert ConnectionOptions.for_url("https://h:443").ssl
    assert not ConnectionOptions.for_url("http://h:80").ssl
    assert ConnectionOptions.for_url("h:1", ssl=True).ssl
    with pytest.raises(InvalidRequestError, match="says plain http:// but ssl=True"):
        ConnectionOptions.for_url("http://h:80", ssl=True)


def test_headers_are_lower_cased_and_options_are_hashable_when_valid() -> None:
    options = ConnectionOptions.for_url("h:1", headers={"Authorization": "Bearer t", "X-A": ""})
    assert options.header_dict() == {"authorization": "Bearer t", "x-a": ""}
    assert hash(options) == hash(ConnectionOptions(headers={"AUTHORIZATION": "Bearer t",
                                                            "x-a": ""}))
    assert PLAINTEXT.header_dict() is None and PLAINTEXT.http_kwargs() == {}


# -- what tritonclient receives --------------------------------------------------------------
def test_grpc_client_passes_tls_files_and_headers_to_tritonclient(recorders, pem) -> None:
    client = RecommenderClient("grpc://h:8001", "m", ssl=True, root_certificates=pem["ca"],
                               private_key=pem["key"], certificate_chain=pem["chain"],
                               headers={"Authorization": "Bearer t"})
    (made,) = recorders
    assert made.url == "h:8001"
    assert made.kwargs == {"ssl": True, "root_certificates": str(pem["ca"]),
                           "private_key": str(pem["key"]),
                           "certificate_chain": str(pem["chain"])}
    client._transport.get_config()
    client._transport.infer(INPUTS, [contract.TOP_SCORES])
    assert [(name, kw["headers"]) for name, kw in made.calls] == [
        ("get_model_config", {"authorization": "Bearer t"}),
        ("infer", {"authorization": "Bearer t"}),
    ]


def test_http_client_passes_ssl_options_and_headers_to_tritonclient(recorders, pem) -> None:
    transport = HttpTransport("https://h:8443", "m", "", 2.0, ConnectionOptions.for_url(
        "https://h:8443", root_certificates=pem["ca"], private_key=pem["key"],
        certificate_chain=pem["chain"], headers={"X-Api-Key": "k"}))
    (made,) = recorders
    assert made.url == "h:8443"
    assert made.kwargs == {
        "connection_timeout": 2.0, "network_timeout": 2.0, "ssl": True, "insecure": False,
        "ssl_options": {"ca_certs": str(pem["ca"]), "certfile": str(pem["chain"]),
                        "keyfile": str(pem["key"])},
    }
    transport.get_config()
    transport.infer(INPUTS, [contract.TOP_SCORES])
    assert [kw["headers"] for _, kw in made.calls] == [{"x-api-key": "k"}] * 2


def test_plaintext_transports_pass_no_tls_and_no_headers(recorders) -> None:
    GrpcTransport("h:1", "m", "", 1.0).get_config()
    HttpTransport("h:1", "m", "", 1.0).get_config()
    grpc, http = recorders
    assert grpc.kwargs == {"ssl": False, "root_certificates": None, "private_key": None,
                           "certificate_chain": None}
    assert http.kwargs == {"connection_timeout": 1.0, "network_timeout": 1.0}
    assert grpc.calls[0][1]["headers"] is None and http.calls[0][1]["headers"] is None


def test_async_client_passes_tls_and_headers_to_the_aio_client(recorders, pem) -> None:
    client = AsyncRecommenderClient("h:1", "m", ssl=True, root_certificates=pem["ca"],
                                    headers={"authorization": "Bearer t"})
    assert recorders == []  # the channel is made on first use, in the running loop
    assert isinstance(client._transport, AsyncGrpcTransport)

    async def calls() -> None:
        await client._transport.get_config()
        await client._transport.infer(INPUTS, [contract.TOP_SCORES])

    asyncio.run(calls())
    (made,) = recorders
    assert isinstance(made, AsyncRecorder) and made.kwargs["ssl"] is True
    assert made.kwargs["root_certificates"] == str(pem["ca"])
    assert [kw["headers"] for _, kw in made.calls] == [{"authorization": "Bearer t"}] * 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_admin_passes_tls_and_headers_on_every_call(recorders, pem, protocol) -> None:
    admin = ModelAdmin("h:1", protocol=protocol, ssl=True, root_certificates=pem["ca"],
                       headers={"x-admin": "s"}, timeout=5.0)
    admin.load_model("m")
    admin.is_model_ready("m")
    admin.list_models()
    (made,) = recorders
    assert made.kwargs["ssl"] is True
    assert all(kw["headers"] == {"x-admin": "s"} for _, kw in made.calls)
    assert len(made.calls) == 3


def test_custom_transport_still_validates_options(pem) -> None:
    with pytest.raises(InvalidRequestError, match="mutual TLS needs both"):
        RecommenderClient("h:1", "m", transport=object(), ssl=True,  # type: ignore[arg-type]
                          private_key=pem["key"])


# -- error hints -----------------------------------------------------------------------------
def _unavailable(text: str) -> InferenceServerException:
    return InferenceServerException(text, status="StatusCode.UNAVAILABLE")


@pytest.mark.parametrize(
    "text, options, hint, expected",
    [
        ("failed to connect to all addresses; last error: UNAVAILABLE: Socket closed",
         PLAINTEXT, "pass ssl=True", ServerUnavailableError),
        ("failed to connect to all addresses; last error: UNAVAILABLE: Socket closed",
         ConnectionOptions(ssl=True), "`private_key` and `certificate_chain`",
         ServerUnavailableError),
        ("Tls handshake failed (TSI_PROTOCOL_FAILURE): CERTIFICATE_VERIFY_FAILED",
         ConnectionOptions(ssl=True), "check that `root_certificates`", TlsHandshakeError),
        ("ipv4:127.0.0.1:8001: Peer name 127.0.0.2 is not in peer certificate",
         ConnectionOptions(ssl=True), "one of its names", TlsHandshakeError),
    ],
)
def test_connection_error_adds_tls_hint_when_handshake_or_socket_fails(
    text, options, hint, expected
) -> None:
    mapped = connection_error(_unavailable(text), "model 'm': config", options)
    assert type(mapped) is expected and hint in str(mapped)
    assert isinstance(mapped, ServerUnavailableError)  # as before TlsHandshakeError existed
    assert mapped.status == "StatusCode.UNAVAILABLE"


def test_connection_error_adds_no_hint_when_server_is_just_down() -> None:
    error = _unavailable("failed to connect to all addresses; Connection refused")
    mapped = connection_error(error, "x", ConnectionOptions(ssl=True))
    assert str(mapped) == "x: failed to connect to all addresses; Connection refused"


def test_restricted_protocol_refusal_is_inference_error_so_it_is_not_retried() -> None:
    error = _unavailable("This protocol is restricted, expecting header "
                         "'triton-grpc-protocol-key'")
    mapped = connection_error(error, "model 'm': infer", PLAINTEXT)
    assert type(mapped) is AuthenticationError and isinstance(mapped, InferenceError)
    assert "triton-grpc-protocol-key" in str(mapped)
