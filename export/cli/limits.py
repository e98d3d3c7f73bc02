"""``kmr-export limits``: the request body limits of a repository, for a gateway or ingress.

Prints the largest legal request of the repository's models (`export.gateway.limits`)
as JSON, plus the nginx directives and the ingress-nginx annotation that enforce it, so
a production gateway (Kubernetes ingress, a load balancer) refuses oversized bodies
before Triton reads them, as ``kmr-export serve --gateway`` does locally.

Example:
    $ kmr-export limits --repo model_repository
    {"grpc_bytes": 5186048, "http_bytes": 20547584, "max_id_bytes": 64}
    nginx (gRPC server block):  client_max_body_size 5186048;
    nginx (HTTP server block):  client_max_body_size 20547584;
    ingress-nginx annotation:   nginx.ingress.kubernetes.io/proxy-body-size: "20547584"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.errors import ExportError, UserError
from export.gateway.limits import DEFAULT_MAX_ID_BYTES, repository_request_limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=Path("model_repository"),
                        help="model repository folder (default: model_repository)")
    parser.add_argument("--max-id-bytes", type=int, default=DEFAULT_MAX_ID_BYTES,
                        metavar="N", help="average bytes per string id the limits allow "
                        f"(default {DEFAULT_MAX_ID_BYTES})")


def run(args: argparse.Namespace) -> int:
    if args.max_id_bytes < 1:
        raise UserError(f"--max-id-bytes must be >= 1. Received: {args.max_id_bytes}")
    try:
        limits = repository_request_limits(args.repo, max_id_bytes=args.max_id_bytes)
    except ExportError as error:
        raise UserError(str(error)) from error
    print(json.dumps({"grpc_bytes": limits.grpc_bytes, "http_bytes": limits.http_bytes,
                      "max_id_bytes": args.max_id_bytes}))
    print(f"nginx (gRPC server block):  client_max_body_size {limits.grpc_bytes};")
    print(f"nginx (HTTP server block):  client_max_body_size {limits.http_bytes};")
    # One ingress serves both protocols on one host: the larger (HTTP/JSON) limit.
    print(f"ingress-nginx annotation:   nginx.ingress.kubernetes.io/proxy-body-size: "
          f"\"{limits.http_bytes}\"")
    return 0
