"""``kmr-export publish``: copy a local repository version up to object storage.

Every file of the version is uploaded and verified, then ``config.pbtxt`` (if changed; it
keeps pinning the fleet's version, see ``kmr-export pin``), then the completion marker
(see `export.storage`). Endpoint and credentials come from the
standard ``AWS_*`` environment variables.

Example:
    $ kmr-export publish --from model_repository --name recommender_rerank \\
        --to s3://models/prod
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, default=Path("model_repository"),
                        help="local model repository (default: model_repository)")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="version to publish (default: the newest local version)")
    parser.add_argument("--to", dest="url", required=True,
                        help="repository URL, s3://bucket/prefix")
    parser.add_argument("--force", action="store_true",
                        help="replace a version that is already complete on the store")


def run(args: argparse.Namespace) -> int:
    from export.storage import publish_version

    result = publish_version(args.source, args.name, args.version, args.url, force=args.force)
    config = "config.pbtxt updated" if result.config_uploaded else "config.pbtxt unchanged"
    print(f"published {result.name} v{result.version} -> {result.url}: {len(result.files)} "
          f"files, {result.bytes} bytes, verified, {config} ({result.seconds:.2f} s)")
    return 0
