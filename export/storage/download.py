"""`download_version`: a complete version from the store to a local folder, checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.storage.checksums import file_digests
from export.storage.location import parse_repository_url, s3_client
from export.storage.versions import require_complete


def download_version(url: str | os.PathLike[str], name: str, version: int,
                     repo: str | os.PathLike[str], *, client: Any = None) -> Path:
    """Copies ``url/name/version`` to ``repo/name/version``; returns that folder.

    Every file the version's marker lists is downloaded and its sha256 compared with the
    marker's, so the copy is exactly what was published (a rollout's canary answers come
    from it).

    Raises:
        ExportError: The version is not complete, or a file differs from its marker.

    Example::

        download_version("s3://models/prod", "recommender_rerank", 2, "/tmp/copy")
    """
    location = parse_repository_url(url)
    client = client or s3_client()
    marker = require_complete(url, name, version, refusing="use", client=client)
    folder = Path(repo) / name / str(version)
    for rel, entry in sorted(marker["files"].items()):
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(location.bucket, location.key(name, str(version), rel), str(target))
        if file_digests(target)[0] != entry.get("sha256"):
            raise ExportError(f"{location.url}/{name}/{version}/{rel} differs from the sha256 "
                              "its marker lists: the stored version was changed after it was "
                              "published; refusing to use it.")
    return folder
