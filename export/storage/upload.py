"""Verified writes to the store: each object is checked (size, sha256, MD5 ETag) after."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.storage.checksums import file_digests

MULTIPART_THRESHOLD = 64 << 20  # below: one PUT, whose ETag is the MD5 of the content


def _verify(client: Any, bucket: str, key: str, size: int, sha256: str, md5: str) -> None:
    """Raises ExportError unless the stored object has that size and checksums."""
    head = client.head_object(Bucket=bucket, Key=key)
    etag = head.get("ETag", "").strip('"')
    problems = []
    if head["ContentLength"] != size:
        problems.append(f"size {head['ContentLength']} != {size}")
    if head.get("Metadata", {}).get("sha256") != sha256:
        problems.append("sha256 metadata differs")
    if "-" not in etag and etag and etag != md5:  # single-part: ETag is the content's MD5
        problems.append(f"ETag {etag} != MD5 {md5}")
    if problems:
        raise ExportError(f"Upload of s3://{bucket}/{key} not verified: {'; '.join(problems)}.")


def upload_verified(client: Any, bucket: str, key: str, path: Path) -> dict[str, Any]:
    """Uploads one file, then checks the stored object; returns ``{"size", "sha256"}``."""
    from boto3.s3.transfer import TransferConfig

    size = path.stat().st_size
    sha256, md5 = file_digests(path)
    client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}},
                       Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD))
    _verify(client, bucket, key, size, sha256, md5)
    return {"size": size, "sha256": sha256}


def put_verified(client: Any, bucket: str, key: str, data: bytes) -> dict[str, Any]:
    """Writes a small object from memory, then checks it like `upload_verified`."""
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - md5 is S3's ETag, not security
    client.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"sha256": sha256})
    _verify(client, bucket, key, len(data), sha256, md5)
    return {"size": len(data), "sha256": sha256}
