"""`publish_version`: one local repository version -> ``s3://bucket/prefix``, marker last."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.storage.location import MARKER_FILE, S3Location, parse_repository_url, s3_client
from export.storage.serving import pinned_version, remote_config, with_pin
from export.storage.upload import put_verified, upload_verified
from export.storage.versions import find_complete_versions, list_objects, read_marker
from export.triton.repository import CONFIG_FILE, existing_versions


@dataclass(frozen=True)
class PublishResult:
    """One published version.

    Attributes:
        url: The version's URL (``s3://bucket/prefix/model/version``).
        name: Model name.
        version: Version number.
        files: ``relative path -> {"size", "sha256"}`` (also the marker's content).
        bytes: Total bytes uploaded.
        seconds: Wall time of the upload and its verification.
        config_uploaded: Whether ``config.pbtxt`` was (re)written.
    """

    url: str
    name: str
    version: int
    files: dict[str, dict[str, Any]]
    bytes: int
    seconds: float
    config_uploaded: bool


def _local_files(version_dir: Path) -> list[Path]:
    files = sorted(p for p in version_dir.rglob("*") if p.is_file())
    if not any(p.name.startswith("model.") for p in files):
        raise ExportError(f"{version_dir} holds no model file: not a published version.")
    return [p for p in files if p.name != MARKER_FILE]


def _check_target(client: Any, location: S3Location, name: str, version: int,
                  force: bool) -> None:
    """Refuses a complete version unless forced; forced: its marker goes first."""
    if read_marker(location.url, name, version, client=client) is None:
        return
    if not force:
        raise ExportError(f"Version {version} of {name!r} is already complete on "
                          f"{location.url}; pass --force to replace it or choose another "
                          "--version.")
    client.delete_object(Bucket=location.bucket, Key=location.key(name, str(version),
                                                                 MARKER_FILE))


def _publish_config(client: Any, location: S3Location, name: str, version: int,
                    config: Path) -> bool:
    """Writes the store's config.pbtxt: the newest version's settings, pinned (see serving).

    The pin is this version when the model is new on the store, else the existing pin
    (publishing is not deploying). A config written before pins existed gets the newest
    complete version, the one its ``latest`` policy served.
    """
    current = remote_config(client, location.url, name)
    complete = find_complete_versions(location.url, name, client=client)
    if current is None:
        pin = version
    else:
        pin = pinned_version(current) or max(complete, default=version)
    newest_settings = current is None or version >= max(complete, default=0)
    wanted = with_pin(config.read_text(encoding="utf-8") if newest_settings else current, pin)
    if wanted == current:
        return False
    put_verified(client, location.bucket, location.key(name, CONFIG_FILE), wanted.encode())
    return True


def _remove_strays(client: Any, bucket: str, folder: str, keep: set[str]) -> None:
    """Deletes objects of an earlier (killed or replaced) upload that are not in ``keep``."""
    for key in set(list_objects(client, bucket, folder)) - keep:
        client.delete_object(Bucket=bucket, Key=key)


def publish_version(repo: str | os.PathLike[str], name: str, version: int | None,
                    url: str, *, force: bool = False, client: Any = None) -> PublishResult:
    """Publishes ``<repo>/<name>/<version>`` to the repository at ``url``.

    Order: every file uploaded and verified (size, sha256 metadata, MD5 ETag of single-part
    uploads), stray objects of an earlier attempt removed, ``config.pbtxt`` (pinned to the
    fleet's version: this one for a new model, else unchanged; see `export.storage.serving`),
    then the marker. Killed midway, nothing is complete and no replica loads it.

    Args:
        repo: The local model repository.
        name: Model name.
        version: Local version (None: the newest); published under the same number.
        url: ``s3://bucket/prefix``.
        force: Replace a complete version of that number.
        client: A boto3 S3 client (default: from the standard ``AWS_*`` environment).

    Raises:
        ExportError: Bad URL, missing local version, a complete remote version without
            ``force``, or a failed upload or verification.

    Example:
        >>> publish_version("missing_repo", "m", 1, "gs://models/prod")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        export.errors.ExportError: Repository 'gs://models/prod': gs:// is not supported yet; ...
    """
    location = parse_repository_url(url)
    repo = Path(repo)
    versions = existing_versions(repo, name) if (repo / name).is_dir() else []
    version = version if version is not None else max(versions, default=None)
    if version is None or version not in versions:
        raise ExportError(f"No version {version} of model {name!r} in {str(repo)!r} "
                          f"(found {versions or 'none'}).")
    started = time.perf_counter()
    client = client or s3_client()
    _check_target(client, location, name, version, force)
    return _upload_version(client, location, repo / name, version, started)


def _upload_version(client: Any, location: S3Location, model_dir: Path, version: int,
                    started: float) -> PublishResult:
    name, version_dir = model_dir.name, model_dir / str(version)
    folder = location.key(name, str(version)) + "/"
    files: dict[str, dict[str, Any]] = {}
    try:
        for path in _local_files(version_dir):
            rel = path.relative_to(version_dir).as_posix()
            files[rel] = upload_verified(client, location.bucket, folder + rel, path)
        _remove_strays(client, location.bucket, folder, {folder + rel for rel in files})
        config_uploaded = _publish_config(client, location, name, version,
                                          model_dir / CONFIG_FILE)
        marker = {"model": name, "version": version, "files": files,
                  "published_at": _dt.datetime.now(_dt.UTC).isoformat()}
        client.put_object(Bucket=location.bucket, Key=folder + MARKER_FILE,
                          Body=json.dumps(marker, indent=1).encode(),
                          ContentType="application/json")
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore raises many types
        raise ExportError(f"Publishing {name!r} v{version} to {location.url} failed after "
                          f"{len(files)} file(s); the version stays incomplete (no marker): "
                          f"{error}") from error
    return PublishResult(f"{location.url}/{name}/{version}", name, version, files,
                         sum(f["size"] for f in files.values()),
                         time.perf_counter() - started, config_uploaded)
