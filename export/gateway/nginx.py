"""nginx in front of tritonserver: gRPC (HTTP/2, ``grpc_pass``) and HTTP, body-size limits.

`nginx_config` writes the config text of an `NginxSite` (upstreams, listen addresses and,
for a gateway, the `RequestLimits`); `NginxProcess` runs ``nginx -c CONF -p PREFIX -g
'daemon off;'`` as a plain child process (own pid file, logs and temp paths in a temp
folder), waits until it listens, reloads it on SIGHUP and always stops it.

Upstreams use ``max_fails``/``fail_timeout`` and ``grpc_next_upstream`` /
``proxy_next_upstream``: a request that cannot reach a replica (connection refused) is
passed to the next one. Requests already sent to a replica that dies are not retried
(inference is a POST: nginx retries non-idempotent requests only with
``non_idempotent``).

With limits, a body over ``client_max_body_size`` is refused by nginx before any byte
reaches Triton: gRPC callers get status RESOURCE_EXHAUSTED, HTTP callers 413 with a JSON
``{"error": ...}``; both name the limit.

nginx comes from Debian packages: ``apt-get install -y nginx-light`` (`INSTALL_HINT`).

Example:
    >>> site = NginxSite(grpc=["127.0.0.1:1"], http=["127.0.0.1:2"],
    ...                  grpc_listen="127.0.0.1:81", http_listen="127.0.0.1:82",
    ...                  limits=RequestLimits(grpc_bytes=5_000_000, http_bytes=9_000_000))
    >>> text = nginx_config(Path("/t"), site)
    >>> "grpc_pass grpc://triton_grpc;" in text, "client_max_body_size 9000000;" in text
    (True, True)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from export.errors import UserError
from export.gateway.limits import RequestLimits

INSTALL_HINT = "apt-get install -y nginx-light"
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Bodies up to this size stay in memory; larger (legal) ones go to a temp file.
_BODY_BUFFER = "1m"


def find_nginx() -> str | None:
    """The nginx binary (PATH, then the Debian locations), or None."""
    found = shutil.which("nginx")
    return found or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)


def require_nginx() -> str:
    """The nginx binary.

    Raises:
        UserError: nginx is not installed (the message says how to install it).
    """
    binary = find_nginx()
    if binary is None:
        raise UserError(f"nginx is not installed: run `{INSTALL_HINT}` (Debian/Ubuntu).")
    return binary


@dataclass(frozen=True)
class NginxSite:
    """What one nginx serves.

    Attributes:
        grpc, http: Upstream ``host:port`` addresses (replicas, or one tritonserver).
        grpc_listen, http_listen: Where nginx listens (``host:port``).
        limits: Body-size limits (a gateway); None keeps nginx's default (1 MB).
        fail_timeout_s: How long a failed upstream is skipped.
        workers: nginx worker processes.
        down: Indices of upstreams marked ``down`` (drained).
    """

    grpc: Sequence[str]
    http: Sequence[str]
    grpc_listen: str
    http_listen: str
    limits: RequestLimits | None = None
    fail_timeout_s: int = 2
    workers: int = 1
    down: frozenset[int] = field(default_factory=frozenset)


def _upstream(name: str, servers: Sequence[str], fail_timeout_s: int,
              down: frozenset[int]) -> str:
    lines = [f"server {s} max_fails=1 fail_timeout={fail_timeout_s}s"
             f"{' down' if i in down else ''};" for i, s in enumerate(servers)]
    return f"upstream {name} {{\n  " + "\n  ".join(lines) + "\n  keepalive 32;\n}\n"


def _body_limit(limit: int | None, grpc: bool) -> str:
    """The server block's limit and the error a refused body gets: a gRPC status
    (RESOURCE_EXHAUSTED, a trailers-only answer) or a JSON body, naming the limit."""
    if limit is None:
        return ""
    text = (f"request body over {limit} bytes, the largest legal request of the served "
            "models (kmr gateway)")
    if grpc:
        refusal = f"""    location @too_large {{
      default_type application/grpc;
      add_header grpc-status 8 always;
      add_header grpc-message "{text}" always;
      return 204;
    }}
"""
    else:
        refusal = f"""    location @too_large {{
      default_type application/json;
      return 413 '{{"error":"{text}"}}';
    }}
"""
    return (f"    client_max_body_size {limit};\n    client_body_buffer_size {_BODY_BUFFER};\n"
            f"    error_page 413 = @too_large;\n{refusal}")


def nginx_config(prefix: Path, site: NginxSite) -> str:
    """The nginx.conf text of ``site`` (nginx 1.22: ``listen ADDR http2`` for gRPC)."""
    temps = "\n".join(f"  {kind}_temp_path {prefix}/tmp/{kind};" for kind in _TEMP_KINDS)
    limits = site.limits
    return f"""worker_processes {site.workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
{_upstream("triton_grpc", site.grpc, site.fail_timeout_s, site.down)}
{_upstream("triton_http", site.http, site.fail_timeout_s, site.down)}
  server {{
    listen {site.grpc_listen} http2;
{_body_limit(limits.grpc_bytes if limits else None, True)}    location / {{
      grpc_pass grpc://triton_grpc;
      grpc_next_upstream error timeout http_502 http_503;
      grpc_next_upstream_tries 3;
      grpc_connect_timeout 1s;
    }}
  }}
  server {{
    listen {site.http_listen};
{_body_limit(limits.http_bytes if limits else None, False)}    location / {{
      proxy_pass http://triton_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
    }}
  }}
}}
"""


class NginxProcess:
    """nginx as a child process serving an `NginxSite` (``with`` starts and stops it)."""

    def __init__(self, site: NginxSite, *, startup_timeout: float = 10.0) -> None:
        self.binary = require_nginx()
        self.site = site
        self.startup_timeout = startup_timeout
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def prefix(self) -> Path:
        """The temp folder holding the config, logs and temp paths."""
        assert self._folder is not None, "not started"
        return Path(self._folder.name)

    @property
    def pid(self) -> int | None:
        """The master process id while running."""
        return self._process.pid if self._process is not None else None

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        """Writes the config, starts nginx and waits until both ports accept connections."""
        self._folder = tempfile.TemporaryDirectory(prefix="kmr-nginx-")
        # Workers may run as nobody: they must reach the temp paths, where a body over
        # the in-memory buffer is spooled (execute only: they cannot list the folder).
        self.prefix.chmod(0o711)
        for kind in _TEMP_KINDS:
            (self.prefix / "tmp" / kind).mkdir(parents=True)
            (self.prefix / "tmp" / kind).chmod(0o777)  # workers may run as nobody
        self._stderr = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115  (stop closes)
        self._write_config()
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.prefix / "nginx.conf"), "-p", str(self.prefix),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr, start_new_session=True)
        self._wait_ready()

    def _write_config(self) -> None:
        (self.prefix / "nginx.conf").write_text(nginx_config(self.prefix, self.site))

    def _workers(self) -> set[int]:
        assert self._process is not None
        path = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children")
        return {int(pid) for pid in path.read_text().split()}

    def reload(self, site: NginxSite, timeout: float = 5.0) -> None:
        """Serves ``site`` from now on (SIGHUP); returns once new workers run."""
        assert self._process is not None and self._process.poll() is None, "nginx not running"
        old = self._workers()
        self.site = site
        self._write_config()
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not self._workers() - old:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {self.error_log()}")
            time.sleep(0.02)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = {self.site.grpc_listen, self.site.http_listen}
        while pending:
            if self._process is not None and self._process.poll() is not None:
                stderr = (self.prefix / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {self._process.returncode}: "
                                   f"{stderr}{self.error_log()}")
            for address in list(pending):
                host, port = address.rsplit(":", 1)
                with socket.socket() as sock:
                    sock.settimeout(0.2)
                    if sock.connect_ex((_connectable(host), int(port))) == 0:
                        pending.discard(address)
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening after {self.startup_timeout} s: "
                                   f"{self.error_log()}")
            time.sleep(0.05)

    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stops nginx (SIGQUIT, then SIGKILL of its process group) and removes the folder."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait(timeout=5)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> NginxProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _connectable(host: str) -> str:
    """A wildcard listen address is reached through loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "*") else host.strip("[]")
