"""Repository URLs on object storage: ``s3://bucket/prefix`` -> bucket and object keys."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from export.errors import ExportError

MARKER_FILE = ".kmr-complete.json"
SUPPORTED_SCHEMES = ("s3",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def url_scheme(repo: str | os.PathLike[str]) -> str | None:
    """The URL scheme of ``repo`` (lower case), or None for a local path.

    Example:
        >>> url_scheme("s3://models/prod"), url_scheme("model_repository"), url_scheme("C:/r")
        ('s3', None, None)
    """
    match = _SCHEME.match(str(repo))
    if match and len(match.group(1)) > 1:  # "C:/..." is a path, "s3://" a URL
        return match.group(1).lower()
    return None


@dataclass(frozen=True)
class S3Location:
    """A model repository on S3: ``s3://bucket/prefix`` (prefix may be empty).

    Example:
        >>> S3Location("models", "prod").url
        's3://models/prod'
    """

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        """The ``s3://bucket/prefix`` URL."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def parse_repository_url(url: str | os.PathLike[str]) -> S3Location:
    """Parses ``s3://bucket[/prefix]``; ExportError for other schemes or a bad URL.

    Example:
        >>> parse_repository_url("s3://models/team/prod/")
        S3Location(bucket='models', prefix='team/prod')
        >>> parse_repository_url("gs://models/prod")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        export.errors.ExportError: Repository 'gs://models/prod': gs:// is not supported yet; ...
    """
    text = str(url)
    scheme = url_scheme(text)
    if scheme not in SUPPORTED_SCHEMES:
        raise ExportError(unsupported_message(text, scheme))
    rest = text.split("://", 1)[1] if "://" in text else ""
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ExportError(f"Repository {text!r}: expected s3://BUCKET/PREFIX with a valid "
                          "bucket name (3-63 lower-case letters, digits, '.', '-').")
    return S3Location(bucket, prefix.strip("/"))


def unsupported_message(repo: str, scheme: str | None) -> str:
    """Why a repository URL with ``scheme`` is refused.

    Example:
        >>> unsupported_message("https://host/repo", "https").split(";")[0]
        "Repository 'https://host/repo': https:// is not a supported repository"
    """
    what = "is not supported yet" if scheme in ("gs", "as") else "is not a supported repository"
    return (f"Repository {repo!r}: {scheme}:// {what}; export writes a local folder only, "
            "or publishes to s3:// (S3 or an S3-compatible store).")


def s3_client() -> Any:
    """A boto3 S3 client from the standard environment (``AWS_ENDPOINT_URL``, keys, region)."""
    try:
        import boto3
    except ImportError as error:  # pragma: no cover - boto3 is a dependency
        raise ExportError("Publishing to s3:// needs boto3: pip install boto3") from error
    return boto3.client("s3")


@contextlib.contextmanager
def store_errors(location: S3Location) -> Iterator[None]:
    """Turns a store failure (no credentials, unreachable, denied) into an ExportError.

    Example:
        >>> with store_errors(S3Location("models")):  # doctest: +ELLIPSIS
        ...     raise OSError("connection refused")
        Traceback (most recent call last):
        export.errors.ExportError: Object store s3://models failed: OSError: connection refused ...
    """
    try:
        yield
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore raises many types
        raise ExportError(f"Object store {location.url} failed: {type(error).__name__}: "
                          f"{error} (endpoint and credentials come from AWS_ENDPOINT_URL, "
                          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)."
                          ) from error
