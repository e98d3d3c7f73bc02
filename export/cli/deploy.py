"""``kmr-export deploy``: write Kubernetes manifests for a published model repository.

Writes ``<out>/triton/`` (Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget for the NVIDIA tritonserver image) and ``<out>/kserve/`` (a KServe
InferenceService on the tritonserver runtime), each with a ``kustomization.yaml``.
Requests are sized from the newest version's ``export_manifest.json`` and the model's
``config.pbtxt`` (see `export.deploy.sizing`): read from ``--repo`` when it is a folder,
from ``--from-local`` for an ``s3://``/``gs://`` repository, or given as
``--table-bytes`` and ``--instances``.

Example:
    $ kmr-export deploy --repo s3://models/recsys --name mf_retrieve --out k8s \\
          --from-local model_repository
    $ kubectl apply -k k8s/triton      # or: kubectl apply -k k8s/kserve
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.deploy import TARGETS, DeployOptions, DeployResult, deploy
from export.deploy.inference_service import s3_secret_annotations
from export.deploy.options import DEFAULT_SECRET, DEFAULT_TRITON_TAG
from export.deploy.sizing import BASE_MEMORY_BYTES, MEMORY_FACTOR, MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True,
                        help="repository: s3://bucket/prefix, gs://bucket/prefix or a folder")
    parser.add_argument("--name", required=True, action="append", dest="models",
                        metavar="MODEL", help="Triton model to load (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the manifests")
    parser.add_argument("--target", choices=(*TARGETS, "both"), default="both",
                        help="which manifests to write (default both)")
    parser.add_argument("--app-name", default=None,
                        help="name of the Kubernetes objects (default triton-<model>)")
    parser.add_argument("--namespace", default=None, help="namespace in the kustomizations")
    parser.add_argument("--triton-tag", default=DEFAULT_TRITON_TAG,
                        help=f"tritonserver NGC release (default {DEFAULT_TRITON_TAG})")
    parser.add_argument("--secret", default=DEFAULT_SECRET,
                        help=f"Secret holding the storage credentials (default {DEFAULT_SECRET})")
    parser.add_argument("--s3-endpoint", default=None, metavar="URL",
                        help="non-AWS S3 endpoint, e.g. http://minio:9000")
    parser.add_argument("--pvc", default=None,
                        help="PersistentVolumeClaim holding a local --repo in the cluster")
    parser.add_argument("--min-replicas", type=int, default=2)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--target-cpu", type=int, default=70, metavar="PERCENT",
                        help="average CPU utilisation the autoscaler keeps (default 70)")
    sizes = parser.add_argument_group("sizing (an object-storage --repo needs one of these)")
    sizes.add_argument("--from-local", type=Path, default=None, metavar="DIR",
                       help="local copy of the repository to read the sizes from")
    sizes.add_argument("--table-bytes", type=int, default=None,
                       help="embedding table bytes per instance (overrides the manifest)")
    sizes.add_argument("--instances", type=int, default=None,
                       help="instances per model (overrides config.pbtxt)")
    sizes.add_argument("--memory-factor", type=float, default=MEMORY_FACTOR,
                       help=f"memory per instance = factor x table bytes + workspace "
                       f"(default {MEMORY_FACTOR:g})")
    sizes.add_argument("--base-memory-mib", type=int, default=BASE_MEMORY_BYTES // MIB,
                       help=f"server overhead per replica (default {BASE_MEMORY_BYTES // MIB})")


def run(args: argparse.Namespace) -> int:
    opts = DeployOptions(
        models=tuple(args.models), app_name=args.app_name, namespace=args.namespace,
        triton_tag=args.triton_tag, secret=args.secret, pvc=args.pvc,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_cpu_percent=args.target_cpu,
    )
    targets = TARGETS if args.target == "both" else (args.target,)
    result = deploy(args.repo, args.out, opts, s3_endpoint=args.s3_endpoint,
                    from_local=args.from_local, table_bytes=args.table_bytes,
                    instances=args.instances, memory_factor=args.memory_factor,
                    base_memory_bytes=args.base_memory_mib * MIB, targets=targets)
    _report(result, opts, args.out, targets)
    return 0


def _report(result: DeployResult, opts: DeployOptions, out: Path,
            targets: tuple[str, ...]) -> None:
    requests = result.resources.as_kubernetes()["requests"]
    for s in result.sizing:
        print(f"{s.name}: {s.instances} instance(s), tables {s.table_bytes} B, "
              f"workspace {s.workspace_bytes} B per instance")
    print(f"requests = limits per replica: cpu {requests['cpu']}, memory {requests['memory']}")
    for path in result.files:
        print(f"wrote {path}")
    if result.location.is_remote:
        keys = ("--from-file=gcloud-application-credentials.json=KEY.json"
                if result.location.scheme == "gs" else
                "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...")
        print(f"credentials: create Secret {opts.secret!r} before applying: "
              f"kubectl create secret generic {opts.secret} {keys}")
        annotations = s3_secret_annotations(result.location)
        if annotations and "kserve" in targets:
            pairs = " ".join(f"{k}={v}" for k, v in annotations.items())
            print(f"kserve: kubectl annotate secret {opts.secret} {pairs}")
    for target in targets:
        print(f"apply: kubectl apply -k {out / target}")
