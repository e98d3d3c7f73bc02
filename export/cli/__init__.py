"""The ``kmr-export`` command line: thin wrappers over library functions.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules import TensorFlow inside ``run`` only, so ``--help`` is fast.

Example:
    $ kmr-export train --out artifacts --epochs 10
    $ python -m export export --model artifacts/model.keras --repo model_repository
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from export.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("export.cli.train", "train a recommender on an interactions file"),
    "tune": ("export.cli.tune", "search training settings on a validation split"),
    "export": ("export.cli.export", "export a trained model into a Triton repository"),
    "serve": ("export.cli.serve", "run the local tritonserver on a model repository"),
    "limits": ("export.cli.limits", "print a repository's request body limits (gateways)"),
    "query": ("client.cli", "ask a served model for recommendations"),
    "demo": ("export.cli.demo", "the main job: train, export, serve, query, print"),
    "deploy": ("export.cli.deploy", "write Kubernetes manifests for a published repository"),
    "rollout": ("export.cli.rollout", "load a version on each replica in turn, canary-checked"),
    "publish": ("export.cli.publish", "copy a local repository version to object storage"),
    "pin": ("export.cli.pin", "show or set the version replicas load from object storage"),
}


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser with one subparser per available command."""
    parser = argparse.ArgumentParser(
        prog="kmr-export",
        description="Train a Keras matrix-factorisation recommender, export it to ONNX "
        "in a Triton model repository, serve it and query it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # command not part of this install
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code (0 ok, 1 user error, 130 interrupted)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
