"""Local file checksums for upload verification."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digests(path: str | Path) -> tuple[str, str]:
    """``(sha256, md5)`` hex digests of a file, read once in 1 MB blocks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"
        >>> _ = p.write_bytes(b"abc")
        >>> file_digests(p)[0][:16], file_digests(p)[1]
        ('ba7816bf8f01cfea', '900150983cd24fb0d6963f7d28e17f72')
    """
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - md5 is S3's ETag, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()
