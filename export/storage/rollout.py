"""Loading only complete versions from object storage on an explicit-mode replica.

A replica on object storage runs ``--model-control-mode=explicit``. A plain load of a
model picks its newest version folder (Triton's default ``latest`` policy), which may be
a half-uploaded one; `pinned_load_config` gives the load request a config whose
``version_policy`` names one *complete* version, and refuses any other.

Example::

    config = pinned_load_config("s3://models/prod", "recommender_rerank", 2)
    grpc_client.load_model("recommender_rerank", config=config)
"""

from __future__ import annotations

import os
from typing import Any

from export.errors import ExportError
from export.storage.location import parse_repository_url, s3_client
from export.storage.serving import remote_config, with_pin
from export.storage.versions import require_complete
from export.triton.repository import CONFIG_FILE


def pinned_config_text(config_text: str, version: int) -> str:
    """``config.pbtxt`` text -> the JSON config of a load request pinned to ``version``.

    Example:
        >>> import json
        >>> text = 'name: "m"\\nbackend: "python"\\nmax_batch_size: 8\\n'
        >>> json.loads(pinned_config_text(text, 3))["version_policy"]
        {'specific': {'versions': ['3']}}
    """
    from google.protobuf import json_format

    from export.triton.config import config_from_text

    config = config_from_text(with_pin(config_text, version))
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def pinned_load_config(url: str | os.PathLike[str], name: str, version: int, *,
                       client: Any = None) -> str:
    """The load-request config for a complete ``version`` of ``name`` at ``url``.

    Raises:
        ExportError: The version is not complete (missing, or its upload never finished).
    """
    location = parse_repository_url(url)
    client = client or s3_client()
    require_complete(url, name, version, refusing="load", client=client)
    text = remote_config(client, url, name)
    if text is None:
        raise ExportError(f"{name!r} has no {CONFIG_FILE} on {location.url}.")
    return pinned_config_text(text, version)
