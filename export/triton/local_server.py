"""Run a real local Triton Inference Server (CPU, python backend) for tests and demos.

The server comes from ``scripts/setup_triton.sh`` (the ``nvidia-pytriton==0.7.0`` wheel
unpacked into ``$KMR_TRITON_HOME``, default ``~/.cache/kmr-recommender/triton``). Only the standard
library and tritonclient are used here: no TensorFlow, no Keras.

How the python-backend stub finds its env (numpy<2 + onnxruntime), measured with
Triton 2.51.0 from that wheel:

* ``PYTHONPATH`` in the server's environment does NOT work: the stub inherits the
  environment, but its embedded interpreter ignores ``PYTHONPATH``/``PYTHONHOME``
  (``sys.path`` stays ``/usr/lib/python3.11`` + dist-packages).
* What works is ``PATH``: the embedded interpreter locates its prefix from the first
  ``python3`` on ``PATH``. With ``<stub-env>/bin`` first on the server's ``PATH`` it finds
  ``<stub-env>/pyvenv.cfg`` and uses the venv's ``site-packages`` (``sys.prefix`` is the
  stub env). :class:`LocalTritonServer` does exactly that, so the model repository stays
  portable: no ``EXECUTION_ENV_PATH`` and no absolute path in any ``config.pbtxt``.
  (``EXECUTION_ENV_PATH`` pointing at the venv also works, but bakes a path into the
  config.)

Example:
    >>> import tritonclient.grpc as grpcclient
    >>> with LocalTritonServer("model_repository") as server:  # doctest: +SKIP
    ...     client = grpcclient.InferenceServerClient(server.grpc_url)
    ...     assert client.is_server_ready()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

ENV_TRITON_HOME = "KMR_TRITON_HOME"


def default_triton_home() -> Path:
    """``$XDG_CACHE_HOME/kmr-recommender/triton`` (``~/.cache/...``): a per-user cache.

    Not the source tree: a wheel install has no writable source tree. ``$KMR_TRITON_HOME``
    overrides it (see `find_tritonserver`).

    Example:
        >>> default_triton_home().parts[-2:]
        ('kmr-recommender', 'triton')
    """
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kmr-recommender" / "triton"
SETUP_SCRIPT = "scripts/setup_triton.sh"
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
_LOG_TAIL_CHARS = 2000
_ERROR_LINE_CHARS = 1500
_GLOG_ERROR = re.compile(r"^E\d{4} ")
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "CUDA")
_SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


class TritonServerError(RuntimeError):
    """The local server is missing, failed to start, or a model failed to load."""


class TritonNotInstalledError(TritonServerError, FileNotFoundError):
    """The unpacked server is missing: run ``scripts/setup_triton.sh``."""


@dataclass(frozen=True)
class GrpcTls:
    """TLS of the gRPC endpoint (Triton's own ``--grpc-use-ssl*`` options).

    Args:
        cert: PEM server certificate (``--grpc-server-cert``); its names must match the
            host clients connect to.
        key: PEM private key of ``cert`` (``--grpc-server-key``).
        root_cert: PEM CA that signs *client* certificates (``--grpc-root-cert``). Given,
            the server requires and verifies a client certificate (mutual TLS,
            ``--grpc-use-ssl-mutual=true``); None: server-side TLS only.

    Raises:
        FileNotFoundError: A file is missing (the message names it).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("server.crt", "server.key"):
        ...         _ = (Path(folder) / name).write_text("PEM")
        ...     flags = GrpcTls(Path(folder) / "server.crt", Path(folder) / "server.key").flags()
        >>> [flag.split("=")[0] for flag in flags]
        ['--grpc-use-ssl', '--grpc-server-cert', '--grpc-server-key']
    """

    cert: Path
    key: Path
    root_cert: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "root_cert"):
            value = getattr(self, name)
            if value is None:
                continue
            path = Path(value).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"gRPC TLS {name} file not found: {path}")
            object.__setattr__(self, name, path)

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by ``root_cert``."""
        return self.root_cert is not None

    def flags(self) -> list[str]:
        """The tritonserver 2.51 command-line flags."""
        flags = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.cert}",
            f"--grpc-server-key={self.key}",
        ]
        if self.root_cert is not None:
            flags += [f"--grpc-root-cert={self.root_cert}", "--grpc-use-ssl-mutual=true"]
        return flags


@dataclass(frozen=True)
class TritonInstallation:
    """Paths of an unpacked server (see ``scripts/setup_triton.sh``)."""

    home: Path
    server: Path
    backend_directory: Path
    libs: Path
    stub_env: Path


def find_tritonserver(home: str | Path | None = None) -> TritonInstallation:
    """Locates the server unpacked by ``scripts/setup_triton.sh``.

    Args:
        home: Cache folder; default ``$KMR_TRITON_HOME`` or ``~/.cache/kmr-recommender/triton``.

    Returns:
        The installation's paths.

    Raises:
        TritonNotInstalledError: When the server, the python backend stub or the stub
            env is missing, with a message saying to run ``scripts/setup_triton.sh``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     find_tritonserver(empty)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        export.triton.local_server.TritonNotInstalledError: ...
    """
    root = Path(home or os.environ.get(ENV_TRITON_HOME) or default_triton_home())
    server_root = root / "pytriton" / "tritonserver"
    found = TritonInstallation(
        home=root,
        server=server_root / "bin" / "tritonserver",
        backend_directory=server_root / "backends",
        libs=root / "nvidia_pytriton.libs",
        stub_env=root / "stub-env",
    )
    required = (
        found.server,
        found.backend_directory / "python" / "triton_python_backend_stub",
        found.stub_env / "pyvenv.cfg",
    )
    for path in required:
        if not (path.is_file() and (path.suffix == ".cfg" or os.access(path, os.X_OK))):
            raise TritonNotInstalledError(
                f"tritonserver not set up: {path} is missing or not executable "
                f"(looked in {root}; set ${ENV_TRITON_HOME} to change). "
                f"Run {SETUP_SCRIPT} first."
            )
    return found


def _free_ports(host: str, count: int) -> list[int]:
    """Picks `count` distinct free TCP ports (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _mapped_shm_regions(pid: int) -> set[Path]:
    """Python-backend shared-memory files mapped by process ``pid`` (empty if it is gone)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    regions = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(_SHM_REGION_PREFIX):
            if not fields[5].endswith(" (deleted)"):
                regions.add(Path(fields[5]))
    return regions


class LocalTritonServer:
    """A ``tritonserver`` child process bound to loopback, as a context manager.

    Args:
        model_repository: The model repository folder.
        host: Address for the HTTP, gRPC and metrics endpoints.
        http_port: HTTP port; 0 picks a free port.
        grpc_port: gRPC port; 0 picks a free port.
        metrics_port: Metrics port; 0 picks a free port.
        model_control_mode: ``"none"``, ``"poll"`` or ``"explicit"``.
        repository_poll_secs: Poll interval for mode ``"poll"``.
        log_path: File for the server's stdout/stderr; default a temporary file.
        startup_timeout: Seconds :meth:`wait_until_ready` waits by default.
        installation: Server paths; default :func:`find_tritonserver`.
        grpc_tls: TLS for the gRPC endpoint: a `GrpcTls` or a tuple
            ``(cert, key[, root_cert])`` (root_cert: require client certificates). HTTP
            and metrics stay plaintext (Triton's HTTP endpoint has no TLS); readiness is
            polled over HTTP on loopback, so it is unaffected.
        extra_args: More tritonserver flags, appended last (e.g.
            ``--grpc-restricted-protocol=inference:x-api-key=secret``).

    Example (needs a repository and the installed server)::

        with LocalTritonServer("model_repository") as server:
            print(server.grpc_url)  # 127.0.0.1:40123
    """

    exit_timeout_secs = 5  # --exit-timeout-secs: bound on shutdown with stuck requests

    def __init__(
        self,
        model_repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        model_control_mode: str = "none",
        repository_poll_secs: int | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 60.0,
        installation: TritonInstallation | None = None,
        grpc_tls: GrpcTls | tuple[str | Path, ...] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"Invalid value received for argument `model_control_mode`. Expected one of "
                f"{MODEL_CONTROL_MODES}. Received: model_control_mode={model_control_mode!r}"
            )
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repository} is not a folder")
        if grpc_tls is not None and not isinstance(grpc_tls, GrpcTls):
            if not isinstance(grpc_tls, (tuple, list)) or len(grpc_tls) not in (2, 3):
                raise ValueError(
                    "Invalid value received for argument `grpc_tls`. Expected a GrpcTls or "
                    f"(cert, key[, root_cert]). Received: grpc_tls={grpc_tls!r}"
                )
            grpc_tls = GrpcTls(*grpc_tls)
        self.grpc_tls: GrpcTls | None = grpc_tls
        self.extra_args = [str(arg) for arg in extra_args]
        self.installation = installation or find_tritonserver()
        self.host = host
        self.model_control_mode = model_control_mode
        self.repository_poll_secs = repository_poll_secs
        self.startup_timeout = startup_timeout
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path = Path(log_path) if log_path else None
        self._log_file = None
        self._final_log: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_regions: set[Path] = set()

    # -- properties ---------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{self.host}:{self._ports['grpc']}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http``."""
        return f"{self.host}:{self._ports['http']}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics endpoint."""
        return f"http://{self.host}:{self._ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        """File receiving the server's output."""
        return self._log_path

    def log_text(self) -> str:
        """Returns everything the server has written so far (also after :meth:`stop`)."""
        if self._final_log is not None:
            return self._final_log
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The exit status of a server that exited (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    def shared_memory_regions(self) -> set[Path]:
        """The python backend's ``/dev/shm`` files this server has mapped (seen so far).

        A server that exits cleanly removes them; after a crash or SIGKILL they stay
        behind (1 MB+ each), so :meth:`stop` removes the ones this server mapped.
        """
        if self.is_running():
            self._shm_regions |= _mapped_shm_regions(self._process.pid)
        return set(self._shm_regions)

    # -- lifecycle ----------------------------------------------------------------
    def _command(self) -> list[str]:
        inst = self.installation
        cmd = [
            str(inst.server),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={inst.backend_directory}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self._ports['http']}",
            f"--grpc-port={self._ports['grpc']}",
            f"--metrics-port={self._ports['metrics']}",
            f"--model-control-mode={self.model_control_mode}",
            # Configs are complete; skipping auto-complete saves one stub launch per model.
            "--disable-auto-complete-config",
            "--log-verbose=0",
            # A request the python backend never answers would hold shutdown for 30 s.
            f"--exit-timeout-secs={self.exit_timeout_secs}",
        ]
        if self.repository_poll_secs is not None:
            cmd.append(f"--repository-poll-secs={self.repository_poll_secs}")
        if self.model_control_mode == "explicit":
            cmd.append("--load-model=*")
        if self.grpc_tls is not None:
            cmd += self.grpc_tls.flags()
        return cmd + self.extra_args

    def _environment(self) -> dict[str, str]:
        inst = self.installation
        env = dict(os.environ)
        # The stub's embedded Python finds its prefix from `python3` on PATH (see module
        # docstring); PYTHONPATH/PYTHONHOME are ignored by the stub but cleared anyway.
        env["PATH"] = os.pathsep.join([str(inst.stub_env / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        # glibc malloc: fewer arenas and early trimming, so the server (and the stub, which
        # inherits this) gives memory back after an oversized request (measured in
        # benchmarks/results/oversized.md: server anon 23 -> 15 MB after a burst).
        for key, value in (("MALLOC_ARENA_MAX", "2"), ("MALLOC_MMAP_THRESHOLD_", "131072"),
                           ("MALLOC_TRIM_THRESHOLD_", "131072")):
            env.setdefault(key, value)
        libs = [str(inst.libs)]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env

    def start(self) -> None:
        """Starts the server process (returns at once; see :meth:`wait_until_ready`)."""
        if self.is_running():
            raise TritonServerError("server is already running")
        wanted = [name for name, port in self._ports.items() if port == 0]
        for name, port in zip(wanted, _free_ports(self.host, len(wanted)), strict=True):
            self._ports[name] = port
        self._final_log = None
        if self._log_path is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="kmr-triton-")
            self._log_path = Path(self._log_dir.name) / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115  (closed in stop())
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,  # own process group: stop() can reap the stubs too
        )

    def _get_json(self, path: str, *, post: bool = False) -> tuple[int, object]:
        # Loopback when bound to every interface: polling never leaves the host.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if self.host == "::" else host
        request = urllib.request.Request(
            f"http://{host}:{self._ports['http']}{path}",
            data=b"{}" if post else None,
            method="POST" if post else "GET",
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def server_errors(self) -> list[str]:
        """Error lines of the server's log (glog ``E...`` lines and ``error:`` lines).

        The harmless CUDA/NVML complaints of a CPU-only machine are left out.
        """
        lines = []
        for line in self.log_text().splitlines():
            if not (_GLOG_ERROR.match(line) or line.startswith("error:")):
                continue
            if any(noise in line for noise in _HARMLESS):
                continue
            lines.append(line[:_ERROR_LINE_CHARS])
        return lines

    def _error(self, message: str) -> TritonServerError:
        errors = "\n".join(self.server_errors()) or "(none)"
        tail = self.log_text()[-_LOG_TAIL_CHARS:]
        return TritonServerError(
            f"{message}\n--- tritonserver errors ---\n{errors}"
            f"\n--- tritonserver log (tail) ---\n{tail}"
        )

    def _expected_models(self) -> set[str]:
        return {p.parent.name for p in self.model_repository.glob("*/config.pbtxt")}

    def wait_until_ready(self, timeout: float | None = None) -> float:
        """Polls until the server and its models are ready.

        In mode ``"none"`` every model folder of the repository must be ``READY``; in the
        other modes, every model the server lists must be.

        Args:
            timeout: Seconds to wait; default ``startup_timeout``.

        Returns:
            Seconds waited.

        Raises:
            TritonServerError: If the process exits, a model fails to load (the message
                holds the server's reason and the tail of its log), or time runs out.
        """
        if self._process is None:
            raise TritonServerError("server was not started; call start() first")
        timeout = self.startup_timeout if timeout is None else timeout
        started = time.monotonic()
        expected = self._expected_models() if self.model_control_mode == "none" else set()
        while True:
            code = self._process.poll()
            if code is not None:
                raise self._error(f"tritonserver exited with code {code} before it was ready")
            ready = False
            with contextlib.suppress(OSError, ValueError):
                status, _ = self._get_json("/v2/health/ready")
                _, index = self._get_json("/v2/repository/index", post=True)
                if isinstance(index, list):
                    states = {m.get("name"): m for m in index if isinstance(m, dict)}
                    for name, model in states.items():
                        if model.get("state") == "UNAVAILABLE" and model.get("reason"):
                            raise self._error(f"model '{name}' failed to load: {model['reason']}")
                    ready = (
                        status == 200
                        and all(states.get(name, {}).get("state") == "READY" for name in expected)
                        and all(m.get("state") == "READY" for m in states.values())
                    )
            if ready:
                self.shared_memory_regions()  # remember them in case the server is killed
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise self._error(f"tritonserver not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> float:
        """Stops the server: SIGTERM, wait, then SIGKILL of its process group.

        Always closes the log file and removes the temporary log folder (the log text is
        kept in memory for :meth:`log_text`), and removes the python backend's
        ``/dev/shm`` files this server mapped (a crash or SIGKILL leaves them behind).
        Safe to call twice.

        Returns:
            Seconds the shutdown took.
        """
        started = time.monotonic()
        self.shared_memory_regions()
        process, self._process = self._process, None
        if process is not None:
            try:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=10)
            finally:
                # Stubs left in the server's own process group (we created it).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            # A crashed or killed server leaves its shared memory behind; only files this
            # server mapped are removed (other servers on the machine keep theirs).
            for region in self._shm_regions:
                with contextlib.suppress(OSError):
                    region.unlink(missing_ok=True)
            self._shm_regions = set()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_dir is not None:
            self._final_log = self.log_text()
            self._log_dir.cleanup()
            self._log_dir = None
            self._log_path = None
        return time.monotonic() - started

    def __enter__(self) -> LocalTritonServer:
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
