"""``kmr-export serve``: run the local tritonserver on a model repository until stopped.

Binds 127.0.0.1 unless ``--host`` says otherwise, model control mode ``none`` unless asked,
waits until every model is ready, prints the endpoints, and stops the server cleanly on
Ctrl-C or SIGTERM. A model that fails to load ends the command with the server's own error.

With ``--grpc-tls-cert`` and ``--grpc-tls-key`` the gRPC endpoint speaks TLS only (Triton's
``--grpc-use-ssl``); adding ``--grpc-tls-root-cert`` requires client certificates signed by
that CA (mutual TLS). HTTP and metrics stay plaintext: keep them on loopback.

With ``--gateway`` an nginx (`export.gateway`) listens on ``--host`` / ``--grpc-port`` /
``--http-port`` instead of Triton, which binds free loopback ports behind it; nginx
refuses any request body larger than the largest legal request of the repository's
models (`export.gateway.limits`) before Triton reads a byte of it. Metrics stay on
loopback. Not combined with TLS.

Example:
    $ kmr-export serve --repo model_repository --grpc-port 8001
    $ kmr-export serve --host 0.0.0.0 --grpc-tls-cert server.crt --grpc-tls-key server.key
    $ kmr-export serve --gateway --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import replace
from pathlib import Path

from export.errors import ExportError, UserError
from export.gateway.limits import DEFAULT_MAX_ID_BYTES, repository_request_limits
from export.gateway.nginx import NginxProcess, NginxSite, require_nginx
from export.triton.local_server import (
    MODEL_CONTROL_MODES,
    GrpcTls,
    LocalTritonServer,
    TritonServerError,
)
from export.triton.supervisor import RestartPolicy, Supervisor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path("model_repository"),
        help="model repository folder (default: model_repository)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; see README before exposing)",
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES, default="none")
    parser.add_argument(
        "--poll-secs",
        type=int,
        default=None,
        help="repository poll interval for --model-control-mode poll",
    )
    parser.add_argument("--log", type=Path, default=None, help="server log file")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--max-restarts", type=int, default=5,
                        help="restart a crashed server at most this often per "
                        "--restart-window seconds, then exit 1 (default 5)")
    parser.add_argument("--restart-window", type=float, default=60.0,
                        help="seconds of the --max-restarts window (default 60)")
    gateway = parser.add_argument_group("request-size gateway (nginx in front)")
    gateway.add_argument("--gateway", action="store_true",
                         help="serve through nginx, which refuses request bodies larger "
                         "than the models' largest legal request")
    gateway.add_argument("--gateway-max-id-bytes", type=int, default=DEFAULT_MAX_ID_BYTES,
                         metavar="N", help="average bytes per string id the limits allow "
                         f"(default {DEFAULT_MAX_ID_BYTES})")
    tls = parser.add_argument_group("gRPC TLS (HTTP and metrics stay plaintext)")
    tls.add_argument("--grpc-tls-cert", type=Path, default=None, metavar="PEM",
                     help="server certificate: turns on TLS for gRPC (with --grpc-tls-key)")
    tls.add_argument("--grpc-tls-key", type=Path, default=None, metavar="PEM",
                     help="private key of --grpc-tls-cert")
    tls.add_argument("--grpc-tls-root-cert", type=Path, default=None, metavar="PEM",
                     help="CA of client certificates: require them (mutual TLS)")


def grpc_tls_of(args: argparse.Namespace) -> GrpcTls | None:
    """The `GrpcTls` the ``--grpc-tls-*`` flags ask for (None: plaintext gRPC).

    Raises:
        UserError: Only one of cert/key, a root cert without them, or a missing file.
    """
    cert, key, root = args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_root_cert
    if cert is None and key is None and root is None:
        return None
    if cert is None or key is None:
        raise UserError("gRPC TLS needs both --grpc-tls-cert and --grpc-tls-key")
    try:
        return GrpcTls(cert, key, root)
    except FileNotFoundError as error:
        raise UserError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    if not args.repo.is_dir():
        raise UserError(f"model repository not found: {args.repo} (export a model first)")
    if args.model_control_mode == "poll" and not args.poll_secs:
        args.poll_secs = 5
    grpc_tls = grpc_tls_of(args)
    site = _gateway_site(args, grpc_tls)
    try:
        RestartPolicy(args.max_restarts, args.restart_window)
    except ValueError as error:
        raise UserError(str(error)) from error
    try:
        server = _server(args, grpc_tls, behind_gateway=site is not None)
    except TritonServerError as error:  # e.g. not set up: the message says what to run
        raise UserError(str(error)) from error
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        seconds = server.wait_until_ready()
    except TritonServerError as error:
        server.stop()
        raise UserError(str(error)) from error
    print(f"tritonserver ready in {seconds:.1f} s (pid {server.pid})")
    gateway = None
    try:
        if site is not None:
            gateway = _start_gateway(site, server, stop)
        _print_endpoints(server, grpc_tls, site)
        policy = RestartPolicy(args.max_restarts, args.restart_window)
        supervisor = Supervisor(server, policy, log=lambda line: print(line, flush=True))
        supervisor.run(stop)
        if gateway is not None and not gateway.running():
            raise UserError(f"the nginx gateway died:\n{gateway.error_log()[-2000:]}")
    except TritonServerError as error:
        raise UserError(str(error)) from error
    finally:
        if gateway is not None:
            gateway.stop()
        seconds = server.stop()
        print(f"tritonserver stopped in {seconds:.1f} s")
    return 0


def _gateway_site(args: argparse.Namespace, grpc_tls: GrpcTls | None) -> NginxSite | None:
    """The gateway's site (upstreams filled in once Triton runs), or None without one."""
    if not args.gateway:
        return None
    if grpc_tls is not None:
        raise UserError("--gateway does not combine with --grpc-tls-*: terminate TLS in "
                        "front of the gateway, or serve without --gateway")
    if args.gateway_max_id_bytes < 1:
        raise UserError("--gateway-max-id-bytes must be >= 1. "
                        f"Received: {args.gateway_max_id_bytes}")
    require_nginx()
    try:
        limits = repository_request_limits(args.repo, max_id_bytes=args.gateway_max_id_bytes)
    except ExportError as error:
        raise UserError(str(error)) from error
    return NginxSite(grpc=(), http=(), grpc_listen=f"{args.host}:{args.grpc_port}",
                     http_listen=f"{args.host}:{args.http_port}", limits=limits)


def _start_gateway(site: NginxSite, server: LocalTritonServer,
                   stop: threading.Event) -> NginxProcess:
    gateway = NginxProcess(replace(site, grpc=[server.grpc_url], http=[server.http_url]))
    try:
        gateway.start()
    except RuntimeError as error:
        raise UserError(f"the nginx gateway did not start: {error}") from error

    def watch() -> None:  # a dead gateway ends the command (its error names why)
        while not stop.wait(0.5):
            if not gateway.running():
                stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return gateway


def _print_endpoints(server: LocalTritonServer, grpc_tls: GrpcTls | None,
                     site: NginxSite | None) -> None:
    tls = "" if grpc_tls is None else (" (mutual TLS)" if grpc_tls.mutual else " (TLS)")
    if site is None:
        print(f"  gRPC     {server.grpc_url}{tls}")
        print(f"  HTTP     {server.http_url}")
    else:
        assert site.limits is not None
        print(f"  gRPC     {site.grpc_listen} (nginx gateway, bodies <= "
              f"{site.limits.grpc_bytes:,} bytes) -> {server.grpc_url}")
        print(f"  HTTP     {site.http_listen} (nginx gateway, bodies <= "
              f"{site.limits.http_bytes:,} bytes) -> {server.http_url}")
    print(f"  metrics  {server.metrics_url}")
    print("Ctrl-C or SIGTERM stops it.", flush=True)


def _server(args: argparse.Namespace, grpc_tls: GrpcTls | None, *,
            behind_gateway: bool) -> LocalTritonServer:
    return LocalTritonServer(
        args.repo,
        host="127.0.0.1" if behind_gateway else args.host,
        http_port=0 if behind_gateway else args.http_port,
        grpc_port=0 if behind_gateway else args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.poll_secs,
        log_path=args.log,
        startup_timeout=args.startup_timeout,
        grpc_tls=grpc_tls,
    )
