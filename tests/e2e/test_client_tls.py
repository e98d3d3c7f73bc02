"""TLS and request headers against a real local tritonserver (gRPC TLS, mutual TLS).

A throwaway CA, a server certificate for 127.0.0.1/localhost, a client certificate and an
unrelated "wrong" CA are made with the ``openssl`` CLI in a temporary folder. The served
model is the tiny rerank stand-in of tests/e2e/test_local_triton.py; answers are checked with
numpy. Failing connections use one retry, a short backoff and a 3 s timeout, so nothing
hangs. HTTP over TLS is checked against a Python HTTPS stub (Triton's HTTP endpoint has no
TLS). Without the server (scripts/setup_triton.sh) or openssl these tests fail (never skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from client import (
    AsyncRecommenderClient,
    InferenceError,
    ModelAdmin,
    RecommenderClient,
    ServerUnavailableError,
    TlsHandshakeError,
)
from client._transport import ConnectionOptions, HttpTransport
from export.cli.serve import add_arguments, grpc_tls_of
from export.errors import UserError
from export.triton.local_server import GrpcTls, LocalTritonServer, TritonInstallation
from kmr import contract
from tests.support.handmade_graphs import (
    ITEM_TABLE,
    NUM_ITEMS,
    USER_TABLE,
    add_model,
    build_rerank_onnx,
)

pytestmark = pytest.mark.triton

MODEL = "tls_rerank"
# Triton 2.51 expects a restricted-protocol key `k` as gRPC header `triton-grpc-protocol-k`.
TOKEN_KEY, TOKEN = "kmr-token", "s3cret"
TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_KEY}"
FAST_FAIL = {"retries": 1, "backoff": 0.05, "timeout": 3.0}  # bounded: no hang
USERS = [0, 3, 5]
CANDIDATES = [[1, 4, 9, 2], [7, 0, 3, 8], [5, 6, 11, 10]]


@dataclass(frozen=True)
class Pki:
    """PEM files of a throwaway CA, server and client certificate, and a wrong CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is needed to make test certificates", pytrace=False)
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, cert


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions, encoding="utf-8")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    return key, cert


def make_pki(folder: Path) -> Pki:
    """Writes the CA, a server cert (127.0.0.1, localhost), a client cert and a wrong CA."""
    ca = _ca(folder, "test-ca")
    server_key, server_cert = _leaf(
        folder, "server", ca,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    client_key, client_cert = _leaf(
        folder, "client", ca,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n")
    _, wrong_ca = _ca(folder, "wrong-ca")
    return Pki(ca[1], server_cert, server_key, client_cert, client_key, wrong_ca)


def expected(user: int, items: list[int], k: int) -> list[int]:
    scores = ITEM_TABLE[items] @ USER_TABLE[user]
    return [items[i] for i in np.argsort(-scores, kind="stable")[:k]]


def assert_correct(result) -> None:
    for b, (user, row) in enumerate(zip(USERS, CANDIDATES, strict=True)):
        assert result.item_ids[b].tolist() == expected(user, row, 3)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tls_repository")
    add_model(root, MODEL, contract.GRAPH_RERANK, build_rerank_onnx(), max_batch_size=4)
    assert max(max(row) for row in CANDIDATES) < NUM_ITEMS
    return root


@pytest.fixture(scope="module")
def tls_server(triton_home: TritonInstallation, repository: Path, pki: Pki):
    """gRPC with server-side TLS; inference also needs the token header."""
    with LocalTritonServer(
        repository,
        installation=triton_home,
        grpc_tls=(pki.server_cert, pki.server_key),
        extra_args=[f"--grpc-restricted-protocol=inference:{TOKEN_KEY}={TOKEN}"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(triton_home: TritonInstallation, repository: Path, pki: Pki):
    """gRPC with mutual TLS: clients must show a certificate signed by the test CA."""
    with LocalTritonServer(repository, installation=triton_home,
                           grpc_tls=GrpcTls(pki.server_cert, pki.server_key, pki.ca)) as running:
        yield running


# -- server-side TLS -------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_gets_correct_answers_when_given_the_ca_and_header(
    tls_server, pki, host
) -> None:
    url = f"{host}:{tls_server.grpc_url.rsplit(':', 1)[1]}"
    with RecommenderClient(url, MODEL, ssl=True, root_certificates=pki.ca,
                           headers={TOKEN_HEADER: TOKEN}) as client:
        result = client.rerank(USERS, CANDIDATES, k=3, raw_ids=False)
        assert client.stats.retries == 0
    assert_correct(result)


def test_async_client_and_admin_work_over_tls_when_given_the_ca(tls_server, pki) -> None:
    async def main():
        async with AsyncRecommenderClient(
            tls_server.grpc_url, MODEL, ssl=True, root_certificates=str(pki.ca),
            headers={TOKEN_HEADER.upper(): TOKEN},  # names are case-insensitive
        ) as client:
            return await client.rerank(USERS, CANDIDATES, k=3, raw_ids=False)

    assert_correct(asyncio.run(main()))
    with ModelAdmin(tls_server.grpc_url, ssl=True, root_certificates=pki.ca,
                    timeout=5.0) as admin:
        assert admin.is_model_ready(MODEL)
        assert [m.state for m in admin.list_models() if m.name == MODEL] == ["READY"]


def test_inference_is_refused_without_retries_when_restricted_header_is_missing(
    tls_server, pki
) -> None:
    with RecommenderClient(tls_server.grpc_url, MODEL, ssl=True, root_certificates=pki.ca,
                           **FAST_FAIL) as client:
        client.fetch_model_info()  # model-config is not restricted
        with pytest.raises(InferenceError) as info:
            client.rerank(USERS, CANDIDATES, k=3, raw_ids=False)
        assert client.stats.retries == 0
    assert TOKEN_HEADER in str(info.value)
    with RecommenderClient(tls_server.grpc_url, MODEL, ssl=True, root_certificates=pki.ca,
                           headers={TOKEN_HEADER: "wrong"}, **FAST_FAIL) as client:
        with pytest.raises(InferenceError, match=TOKEN_HEADER):
            client.rerank(USERS, CANDIDATES, k=3, raw_ids=False)


def test_plaintext_client_fails_fast_with_a_tls_hint_when_server_requires_tls(
    tls_server,
) -> None:
    started = time.monotonic()
    with RecommenderClient(tls_server.grpc_url, MODEL, headers={TOKEN_HEADER: TOKEN},
                           **FAST_FAIL) as client:
        with pytest.raises((ServerUnavailableError, InferenceError)) as info:
            client.fetch_model_info()
        assert client.stats.failures == 1
    assert time.monotonic() - started < 15
    assert "ssl=True" in str(info.value)


@pytest.mark.parametrize("which", ["wrong CA", "system CAs"])
def test_tls_client_fails_fast_when_the_ca_did_not_sign_the_server(
    tls_server, pki, which
) -> None:
    roots = pki.wrong_ca if which == "wrong CA" else None
    started = time.monotonic()
    with RecommenderClient(tls_server.grpc_url, MODEL, ssl=True, root_certificates=roots,
                           headers={TOKEN_HEADER: TOKEN}, **FAST_FAIL) as client:
        with pytest.raises((ServerUnavailableError, InferenceError)) as info:
            client.fetch_model_info()
    assert time.monotonic() - started < 15
    assert "root_certificates" in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_admin_wait_until_ready_raises_tls_error_at_once_when_the_ca_did_not_sign_the_server(
    tls_server, pki, host
) -> None:
    url = f"{host}:{tls_server.grpc_url.rsplit(':', 1)[1]}"
    started = time.monotonic()
    with ModelAdmin(url, ssl=True, root_certificates=pki.wrong_ca, timeout=3.0) as admin:
        with pytest.raises(TlsHandshakeError, match="root_certificates"):
            admin.wait_until_ready(MODEL, timeout=20.0, interval=0.05)
    assert time.monotonic() - started < 10  # not after the whole 20 s


# -- mutual TLS ------------------------------------------------------------------------------
def test_mutual_tls_client_gets_correct_answers_when_it_shows_its_certificate(
    mtls_server, pki
) -> None:
    with RecommenderClient(mtls_server.grpc_url, MODEL, ssl=True, root_certificates=pki.ca,
                           private_key=pki.client_key,
                           certificate_chain=pki.client_cert) as client:
        assert_correct(client.rerank(USERS, CANDIDATES, k=3, raw_ids=False))


def test_mutual_tls_refuses_client_when_it_has_no_certificate(mtls_server, pki) -> None:
    started = time.monotonic()
    with RecommenderClient(mtls_server.grpc_url, MODEL, ssl=True, root_certificates=pki.ca,
                           **FAST_FAIL) as client:
        with pytest.raises((ServerUnavailableError, InferenceError)) as info:
            client.fetch_model_info()
    assert "certificate_chain" in str(info.value)
    assert time.monotonic() - started < 15


# -- HTTP over TLS (Triton's HTTP endpoint has no TLS: a Python HTTPS stub stands in) ------
@pytest.fixture(scope="module")
def https_stub(pki: Pki) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTPS server (the test server certificate) answering any GET with ``{}``."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = json.dumps({"name": MODEL}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_http_client_verifies_the_server_and_sends_headers_when_url_is_https(
    https_stub, pki
) -> None:
    url, seen = https_stub
    options = ConnectionOptions.for_url(url, root_certificates=pki.ca,
                                        headers={"Authorization": "Bearer t"})
    assert HttpTransport(url, MODEL, "", 3.0, options).get_config() == {"name": MODEL}
    assert seen[-1]["authorization"] == "Bearer t"
    wrong = ConnectionOptions.for_url(url, root_certificates=pki.wrong_ca)
    with pytest.raises(ServerUnavailableError, match="root_certificates"):
        HttpTransport(url, MODEL, "", 3.0, wrong).get_config()


# -- server options (no server needed) -------------------------------------------------------
def test_server_command_has_tritonserver_tls_flags_when_grpc_tls_is_given(
    triton_home, repository, pki
) -> None:
    plain = LocalTritonServer(repository, installation=triton_home)._command()
    assert not any(arg.startswith("--grpc-use-ssl") for arg in plain)
    server = LocalTritonServer(repository, installation=triton_home,
                               grpc_tls=(pki.server_cert, pki.server_key))
    assert server._command()[-3:] == [
        "--grpc-use-ssl=true", f"--grpc-server-cert={pki.server_cert}",
        f"--grpc-server-key={pki.server_key}"]
    mutual = LocalTritonServer(repository, installation=triton_home,
                               grpc_tls=(pki.server_cert, pki.server_key, pki.ca))
    assert mutual._command()[-2:] == [f"--grpc-root-cert={pki.ca}", "--grpc-use-ssl-mutual=true"]
    with pytest.raises(FileNotFoundError, match="nope.key"):
        LocalTritonServer(repository, installation=triton_home,
                          grpc_tls=(pki.server_cert, pki.ca.parent / "nope.key"))
    with pytest.raises(ValueError, match="grpc_tls"):
        LocalTritonServer(repository, installation=triton_home, grpc_tls=(pki.server_cert,))


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_flags_map_to_grpc_tls_and_refuse_half_configurations(pki) -> None:
    assert grpc_tls_of(_serve_args()) is None
    tls = grpc_tls_of(_serve_args("--grpc-tls-cert", str(pki.server_cert),
                                  "--grpc-tls-key", str(pki.server_key),
                                  "--grpc-tls-root-cert", str(pki.ca)))
    assert tls == GrpcTls(pki.server_cert, pki.server_key, pki.ca) and tls.mutual
    with pytest.raises(UserError, match="--grpc-tls-key"):
        grpc_tls_of(_serve_args("--grpc-tls-cert", str(pki.server_cert)))
    with pytest.raises(UserError, match="--grpc-tls-cert"):
        grpc_tls_of(_serve_args("--grpc-tls-root-cert", str(pki.ca)))
    with pytest.raises(UserError, match="missing.crt"):
        grpc_tls_of(_serve_args("--grpc-tls-cert", str(pki.ca.parent / "missing.crt"),
                                "--grpc-tls-key", str(pki.server_key)))
