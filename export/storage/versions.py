"""What is on the store: version folders of a model, and which of them are complete."""

from __future__ import annotations

import json
import os
from typing import Any

from export.errors import ExportError
from export.storage.location import MARKER_FILE, parse_repository_url, s3_client


def _list(client: Any, bucket: str, prefix: str, delimiter: str | None = None) -> list[dict]:
    """Every object (or common prefix, with a delimiter) under ``prefix``."""
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        args["Delimiter"] = delimiter
    found: list[dict] = []
    for page in client.get_paginator("list_objects_v2").paginate(**args):
        found += page.get("CommonPrefixes", []) if delimiter else page.get("Contents", [])
    return found


def list_objects(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """``key -> size`` of every object under ``prefix`` (a folder: end it with ``/``)."""
    return {o["Key"]: o["Size"] for o in _list(client, bucket, prefix)}


def remote_versions(url: str | os.PathLike[str], name: str, *, client: Any = None) -> list[int]:
    """Every version folder of model ``name`` on the store, complete or not, sorted.

    Example::

        remote_versions("s3://models/prod", "recommender_rerank")  # [1, 2, 3]
    """
    location = parse_repository_url(url)
    client = client or s3_client()
    prefixes = _list(client, location.bucket, location.key(name) + "/", delimiter="/")
    names = [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in prefixes]
    return sorted(int(n) for n in names if n.isdigit() and not n.startswith("0"))


def read_marker(url: str | os.PathLike[str], name: str, version: int, *,
                client: Any = None) -> dict | None:
    """The completion marker of a version (its file list and checksums), or None."""
    location = parse_repository_url(url)
    client = client or s3_client()
    try:
        body = client.get_object(Bucket=location.bucket,
                                 Key=location.key(name, str(version), MARKER_FILE))["Body"]
    except client.exceptions.NoSuchKey:
        return None
    try:
        marker = json.loads(body.read())
    except ValueError as error:
        raise ExportError(f"Corrupt marker of {name!r} v{version} on {location.url}") from error
    return marker if isinstance(marker, dict) else None


def complete_marker(url: str | os.PathLike[str], name: str, version: int, *,
                    client: Any = None) -> dict | None:
    """The version's marker when the version is complete (see `is_complete`), else None."""
    location = parse_repository_url(url)
    client = client or s3_client()
    marker = read_marker(url, name, version, client=client)
    if marker is None or not isinstance(marker.get("files"), dict):
        return None
    folder = location.key(name, str(version)) + "/"
    sizes = list_objects(client, location.bucket, folder)
    complete = all(sizes.get(folder + rel) == entry.get("size")
                   for rel, entry in marker["files"].items())
    return marker if complete else None


def is_complete(url: str | os.PathLike[str], name: str, version: int, *,
                client: Any = None) -> bool:
    """Whether the version has its marker and every file it lists, with those sizes."""
    return complete_marker(url, name, version, client=client) is not None


def require_complete(url: str | os.PathLike[str], name: str, version: int, *,
                     refusing: str, client: Any = None) -> dict:
    """The marker of a complete version; ExportError naming the complete ones otherwise.

    ``refusing`` ends the message: "refusing to {refusing} it".
    """
    client = client or s3_client()
    marker = complete_marker(url, name, version, client=client)
    if marker is None:
        complete = find_complete_versions(url, name, client=client)
        raise ExportError(f"Version {version} of {name!r} is not complete on "
                          f"{parse_repository_url(url).url} (complete: {complete or 'none'}); "
                          f"refusing to {refusing} it.")
    return marker


def find_complete_versions(url: str | os.PathLike[str], name: str, *,
                           client: Any = None) -> list[int]:
    """The versions of ``name`` that a rollout may load: complete ones only, sorted.

    A version is complete when its marker (written last by `publish_version`) exists and
    every file it lists is there with its size; a half-uploaded version is left out.

    Example::

        find_complete_versions("s3://models/prod", "recommender_rerank")  # [1, 2]
    """
    client = client or s3_client()
    return [v for v in remote_versions(url, name, client=client)
            if is_complete(url, name, v, client=client)]
