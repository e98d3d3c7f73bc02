"""The fleet's version: the version pin in the store's ``config.pbtxt``.

A replica on object storage starts with ``--model-control-mode=explicit
--load-model=NAME`` (what `kmr-export deploy` writes), so a (re)started replica loads what
the store's ``config.pbtxt`` names. With Triton's default policy (``latest``) that would be
the newest version *folder*, which may be half uploaded or not rolled out yet. So the
store's config always pins one version (``version_policy { specific { versions: N } }``):

- `publish_version` pins the first version of a model; later publishes keep the pin
  (publishing is not deploying);
- `export.rollout.rollout` on an ``s3://`` repository moves the pin to the new version
  once every replica serves it and passed its canary (a stopped rollout leaves it).

A replica restarted during a rollout comes back on the pinned (old) version.

Example:
    >>> text = 'name: "m"\\nbackend: "python"\\nmax_batch_size: 8\\n'
    >>> pinned_version(text) is None, pinned_version(with_pin(text, 3))
    (True, 3)
"""

from __future__ import annotations

import os
from typing import Any

from export.errors import ExportError
from export.storage.location import parse_repository_url, s3_client
from export.storage.upload import put_verified
from export.storage.versions import require_complete
from export.triton.repository import CONFIG_FILE


def with_pin(config_text: str, version: int) -> str:
    """``config.pbtxt`` text with its version policy set to serve exactly ``version``."""
    from export.triton.config import config_from_text, config_to_text

    config = config_from_text(config_text)
    config.version_policy.specific.versions[:] = [int(version)]
    return config_to_text(config)


def pinned_version(config_text: str) -> int | None:
    """The one version a config's policy names, or None (``latest``/``all``/several)."""
    from export.triton.config import config_from_text

    config = config_from_text(config_text)
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    versions = list(config.version_policy.specific.versions)
    return int(versions[0]) if len(versions) == 1 else None


def remote_config(client: Any, url: str | os.PathLike[str], name: str) -> str | None:
    """The store's ``config.pbtxt`` text of ``name``, or None when it has none."""
    location = parse_repository_url(url)
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(name, CONFIG_FILE))
    except client.exceptions.NoSuchKey:
        return None
    return body["Body"].read().decode("utf-8")


def serving_version(url: str | os.PathLike[str], name: str, *,
                    client: Any = None) -> int | None:
    """The version a (re)started replica loads: the store config's pin (None: not pinned).

    Example::

        serving_version("s3://models/prod", "recommender_rerank")  # 2
    """
    text = remote_config(client or s3_client(), url, name)
    return None if text is None else pinned_version(text)


def pin_serving_version(url: str | os.PathLike[str], name: str, version: int, *,
                        client: Any = None) -> int | None:
    """Pins the store's config to ``version``; returns the version pinned before.

    Raises:
        ExportError: The model has no config on the store, or the version is not complete.
    """
    location = parse_repository_url(url)
    client = client or s3_client()
    text = remote_config(client, url, name)
    if text is None:
        raise ExportError(f"{name!r} has no {CONFIG_FILE} on {location.url}: publish it first.")
    require_complete(url, name, version, refusing="pin", client=client)
    before = pinned_version(text)
    if before != version:
        put_verified(client, location.bucket, location.key(name, CONFIG_FILE),
                     with_pin(text, version).encode("utf-8"))
    return before
