"""``kmr-export rollout``: load a version on each Triton replica in turn, canary-checked.

Example:
    $ kmr-export rollout --replicas 10.0.0.1:8001,10.0.0.2:8001 --name ro --version 2 \\
        --repo model_repository
    $ kmr-export rollout --replicas 10.0.0.1:8001 --name ro --version 2 --repo model_repository \\
        --rollback   # back to the highest version below 2
    $ kmr-export rollout --replicas 10.0.0.1:8001,10.0.0.2:8001 --name ro --version 3 \\
        --repo s3://models/prod   # replicas on object storage
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from collections.abc import Callable

from export.errors import ExportError


def _replicas(text: str) -> list[str]:
    """``host:port,host:port`` -> list (argparse type).

    Example:
        >>> _replicas("a:1, b:2")
        ['a:1', 'b:2']
    """
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if not urls or any(":" not in url for url in urls):
        raise argparse.ArgumentTypeError(f"expected host:port[,host:port...], got {text!r}")
    return urls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the rollout options."""
    parser.add_argument("--replicas", type=_replicas, required=True,
                        help="gRPC host:port of each replica, comma-separated, in rollout order")
    parser.add_argument("--name", required=True, help="served model name")
    parser.add_argument("--version", type=int, required=True, help="version to roll out")
    parser.add_argument("--repo", required=True,
                        help="local copy of the repository (canary answers come from "
                             "onnxruntime on REPO/NAME/VERSION/model.onnx), or the s3:// "
                             "repository the replicas load: the version must be complete "
                             "there, and the store's config is pinned to it when done")
    parser.add_argument("--rollback", action="store_true",
                        help="roll back from VERSION to the highest local version below it")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for a replica to serve the version")
    parser.add_argument("--before-each", metavar="CMD",
                        help="command run before each replica, {replica} replaced (e.g. drain "
                             "it from the load balancer)")
    parser.add_argument("--after-each", metavar="CMD", help="command run after each replica")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _hook(command: str | None) -> Callable[[str], None] | None:
    if not command:
        return None

    def run(replica: str) -> None:
        done = subprocess.run(shlex.split(command.replace("{replica}", replica)), check=False)
        if done.returncode != 0:
            raise ExportError(f"hook {command!r} failed for {replica} (exit {done.returncode})")

    return run


def run(args: argparse.Namespace) -> int:
    """Runs the rollout; exit 0 when every replica serves the version, 1 when it stopped."""
    from export.rollout import rollback, rollout

    action = rollback if args.rollback else rollout
    report = action(args.replicas, args.name, args.version, repo=args.repo,
                    timeout=args.timeout, before_each=_hook(args.before_each),
                    after_each=_hook(args.after_each))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    if not report.completed:
        raise ExportError(f"rollout of {args.name!r} version {report.version} stopped at "
                          f"{report.replicas[-1].url}: {report.replicas[-1].error}")
    return 0
