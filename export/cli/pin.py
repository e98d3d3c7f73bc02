"""``kmr-export pin``: show or set the version a (re)started replica loads from a store.

The store's ``config.pbtxt`` pins one version (see `export.storage.serving`): publishing
keeps the pin, ``rollout --repo s3://...`` moves it once every replica serves the new
version. ``pin --version N`` moves it by hand (running replicas are not touched: use it
for a fleet with no replica up, or after loading the version yourself); only a complete
version can be pinned.

Example:
    $ kmr-export pin --repo s3://models/prod --name recommender_rerank
    recommender_rerank on s3://models/prod: pinned to version 2 (complete: [1, 2, 3])
    $ kmr-export pin --repo s3://models/prod --name recommender_rerank --version 3
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="repository URL, s3://bucket/prefix")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="version to pin (default: only show the current pin)")


def run(args: argparse.Namespace) -> int:
    from export.storage import find_complete_versions, pin_serving_version, serving_version
    from export.storage.location import parse_repository_url, store_errors

    location = parse_repository_url(args.repo)
    with store_errors(location):
        if args.version is not None:
            before = pin_serving_version(location.url, args.name, args.version)
            print(f"{args.name} on {location.url}: pinned to version {args.version} "
                  f"(was {before if before is not None else 'not pinned'})")
            return 0
        pinned = serving_version(location.url, args.name)
        complete = find_complete_versions(location.url, args.name)
    state = f"pinned to version {pinned}" if pinned is not None else "not pinned"
    print(f"{args.name} on {location.url}: {state} (complete: {complete or 'none'})")
    return 0
