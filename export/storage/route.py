"""``export --repo s3://...``: export into a temporary local repository, then publish."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.storage.location import S3Location, parse_repository_url, s3_client, store_errors
from export.storage.publish import publish_version
from export.storage.versions import read_marker, remote_versions
from export.triton.repository import CONFIG_FILE


def _plan_version(client: Any, location: S3Location, names: list[str], options: Any) -> int:
    """The version to write: the asked one (refused if complete, unless forced) or the next."""
    if options.version is None:
        return 1 + max((max(remote_versions(location.url, n, client=client), default=0)
                        for n in names), default=0)
    for name in names:
        if not options.force and read_marker(location.url, name, options.version,
                                             client=client) is not None:
            raise ExportError(f"Version {options.version} of {name!r} is already complete on "
                              f"{location.url}; pass --force to replace it or choose another "
                              "--version.")
    return options.version


def _fetch_configs(client: Any, location: S3Location, names: list[str], repo: Path) -> None:
    """Copies each model's remote config.pbtxt, so the export keeps model-level settings."""
    for name in names:
        try:
            body = client.get_object(Bucket=location.bucket,
                                     Key=location.key(name, CONFIG_FILE))["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
        (repo / name).mkdir(parents=True)
        (repo / name / CONFIG_FILE).write_bytes(body)


def export_to_object_store(model: Any, url: str, options: Any, *, progress: Any,
                           export: Callable[..., Any]) -> Any:
    """`export.api.export_model` to ``s3://bucket/prefix``: temp local repo, then publish.

    The version is the asked one or one more than the highest version folder of any of
    the exported models on the store (complete or not). Each model is published with
    `publish_version` (marker last); ``progress`` gets an ``upload`` stage per model.
    ``export`` is `export.api.export_model` (passed in: export.api calls this module).
    Returns the `export.api.ExportResult`, ``version_dir`` being the version's URL.

    Example::

        export_to_object_store("artifacts/model.keras", "s3://models/prod",
                               ExportOptions(graph="both"), progress=print,
                               export=export_model)
    """
    location = parse_repository_url(url)
    client = s3_client()
    names = [name for name, _ in options.model_names()]
    with store_errors(location):
        version = _plan_version(client, location, names, options)
    options = dataclasses.replace(options, version=version)
    with tempfile.TemporaryDirectory(prefix="kmr-s3-export-") as folder:
        repo = Path(folder) / "repo"
        repo.mkdir()
        with store_errors(location):
            _fetch_configs(client, location, names, repo)
        result = export(model, repo, options, progress=progress)
        models, timings = [], dict(result.timings)
        for published in result.models:
            done = publish_version(repo, published.name, published.version, location.url,
                                   force=options.force, client=client)
            timings[f"upload_{published.name}"] = done.seconds
            progress("upload", done.seconds, f"{published.name} v{done.version} -> {done.url} "
                     f"({len(done.files)} files, {done.bytes} bytes, verified)")
            models.append(dataclasses.replace(published, version_dir=done.url))
    return dataclasses.replace(result, models=tuple(models), timings=timings)
