"""Where the served repository lives, as Triton and KServe each spell it.

Accepted: ``s3://bucket/prefix``, ``gs://bucket/prefix``, a local path or ``file://`` URL
(served in the cluster from a PersistentVolumeClaim). Anything else with a scheme
(``http://``, ``az://``, ``s3:/x``, ...) is refused rather than taken for a folder name.

Triton reads a non-AWS S3 endpoint from the URL itself (``s3://host:port/bucket/path``,
``s3://https://host:port/bucket/path``); KServe's storage initializer wants the plain
``s3://bucket/path`` and the endpoint on the credentials Secret. `RepositoryLocation`
keeps the two apart, whichever form was given.

Example:
    >>> loc = parse_repository("s3://models/recsys", s3_endpoint="https://minio.local:9000")
    >>> loc.triton_url(), loc.storage_uri()
    ('s3://https://minio.local:9000/models/recsys', 's3://models/recsys')
    >>> parse_repository("s3://minio:9000/models/recsys").endpoint
    'http://minio:9000'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from export.errors import ExportError

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")
_TRITON_S3 = re.compile(r"^(?:(?P<proto>https?)://)?(?P<host>[0-9A-Za-z.-]+):(?P<port>\d+)/(?P<rest>.+)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class RepositoryLocation:
    """A parsed repository URL.

    Attributes:
        scheme: ``"s3"``, ``"gs"`` or ``"file"``.
        bucket_path: ``bucket/prefix`` for object storage (no trailing slash), else ``""``.
        local_path: The folder for ``"file"``, else None.
        endpoint: ``http(s)://host:port`` of a non-AWS S3 store, else None.
    """

    scheme: str
    bucket_path: str = ""
    local_path: Path | None = None
    endpoint: str | None = None

    @property
    def is_remote(self) -> bool:
        """True for object storage (``s3``/``gs``)."""
        return self.scheme in ("s3", "gs")

    def triton_url(self, mount_path: str = "/models") -> str:
        """The ``--model-repository`` value (a local repository is mounted at ``mount_path``).

        Example:
            >>> parse_repository("gs://bkt/p/").triton_url()
            'gs://bkt/p'
        """
        if self.scheme == "file":
            return mount_path
        if self.scheme == "s3" and self.endpoint:
            split = urlsplit(self.endpoint)
            port = split.port or (443 if split.scheme == "https" else 80)
            proto = "https://" if split.scheme == "https" else ""
            return f"s3://{proto}{split.hostname}:{port}/{self.bucket_path}"
        return f"{self.scheme}://{self.bucket_path}"

    def storage_uri(self, pvc: str | None = None) -> str:
        """KServe's ``storageUri`` (``pvc://NAME`` for a local repository).

        Example:
            >>> parse_repository("/srv/repo").storage_uri(pvc="models")
            'pvc://models'
        """
        if self.scheme == "file":
            if not pvc:
                raise ExportError(_NEED_PVC.format(path=self.local_path))
            return f"pvc://{pvc}"
        return f"{self.scheme}://{self.bucket_path}"


_NEED_PVC = (
    "Repository {path} is a local folder, which a cluster cannot read: give --pvc NAME "
    "(a PersistentVolumeClaim holding that repository), or publish it to object storage "
    "and pass its s3:// or gs:// URL (with --from-local {path} for the sizes)."
)


def parse_repository(url: str, *, s3_endpoint: str | None = None) -> RepositoryLocation:
    """Parses ``url``; raises ExportError for an unsupported scheme or a malformed URL.

    Example:
        >>> parse_repository("file:///srv/repo").local_path
        PosixPath('/srv/repo')
        >>> parse_repository("https://example.com/repo")
        Traceback (most recent call last):
        ...
        export.errors.ExportError: Unsupported repository URL 'https://example.com/repo' \
(scheme 'https'): expected s3://bucket/prefix, gs://bucket/prefix or a local path.
    """
    if not url or not url.strip():
        raise ExportError("Empty repository URL: expected s3://, gs:// or a local path.")
    match = _SCHEME.match(url)
    if match is None:
        return _checked_local(Path(url), s3_endpoint)
    scheme = match["scheme"].lower()
    if scheme == "file" and url.lower().startswith("file://"):
        return _checked_local(Path(url[len("file://"):]), s3_endpoint)
    if scheme not in ("s3", "gs") or not url[len(scheme) + 1:].startswith("//"):
        raise ExportError(
            f"Unsupported repository URL {url!r} (scheme {scheme!r}): expected "
            "s3://bucket/prefix, gs://bucket/prefix or a local path."
        )
    rest = url[len(scheme) + 3:].strip("/")
    endpoint = _normalized_endpoint(s3_endpoint) if s3_endpoint else None
    if scheme == "s3" and (triton_style := _TRITON_S3.match(rest)):
        if endpoint:
            raise ExportError(f"Repository URL {url!r} already names an endpoint; "
                              "drop --s3-endpoint or the host:port from the URL.")
        endpoint = f"{triton_style['proto'] or 'http'}://{triton_style['host']}:" \
                   f"{triton_style['port']}"
        rest = triton_style["rest"].strip("/")
    if scheme == "gs" and endpoint:
        raise ExportError("--s3-endpoint applies to s3:// repositories only.")
    bucket = rest.split("/", 1)[0]
    if not _BUCKET.match(bucket):
        raise ExportError(f"Repository URL {url!r} has no valid bucket name "
                          f"(got {bucket!r}): expected {scheme}://bucket/prefix.")
    return RepositoryLocation(scheme, bucket_path=rest, endpoint=endpoint)


def _checked_local(path: Path, s3_endpoint: str | None) -> RepositoryLocation:
    if s3_endpoint:
        raise ExportError("--s3-endpoint applies to s3:// repositories only.")
    return RepositoryLocation("file", local_path=path)


def _normalized_endpoint(endpoint: str) -> str:
    split = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if split.scheme not in ("http", "https") or not split.hostname or split.path.strip("/"):
        raise ExportError(f"Invalid S3 endpoint {endpoint!r}: expected http(s)://host[:port].")
    return f"{split.scheme}://{split.netloc}"
