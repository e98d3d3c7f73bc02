"""Assemble and write the manifests: ``<out>/triton/`` (plain) and ``<out>/kserve/``.

Each folder holds one YAML file per object kind and a ``kustomization.yaml`` listing
them, so either way deploys with ``kubectl apply -k <out>/triton`` (or ``.../kserve``).

Example:
    >>> import tempfile
    >>> from export.deploy.location import parse_repository
    >>> from export.deploy.options import DeployOptions
    >>> from export.deploy.sizing import ModelSizing
    >>> plan = plan_deployment(DeployOptions(models=("mf",)), parse_repository("s3://bkt/r"),
    ...                        [ModelSizing("mf", instances=1, table_bytes=2**20)])
    >>> sorted(plan)[:3]
    ['kserve/inferenceservice.yaml', 'kserve/kustomization.yaml', 'kserve/serviceaccount.yaml']
    >>> with tempfile.TemporaryDirectory() as out:
    ...     [p.name for p in write_manifests(out, plan) if p.parent.name == "triton"]
    ['deployment.yaml', 'horizontalpodautoscaler.yaml', 'kustomization.yaml', \
'poddisruptionbudget.yaml', 'service.yaml']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from export.deploy import inference_service as kserve
from export.deploy import workloads
from export.deploy.location import RepositoryLocation
from export.deploy.options import DeployOptions
from export.deploy.sizing import ModelSizing, Resources, size_resources
from export.errors import ExportError

TARGETS = ("triton", "kserve")
Manifest = workloads.Manifest


def file_name(manifest: Manifest) -> str:
    """``<kind in lower case>.yaml``.

    Example:
        >>> file_name({"kind": "PodDisruptionBudget"})
        'poddisruptionbudget.yaml'
    """
    return f"{manifest['kind'].lower()}.yaml"


def kustomization(manifests: Iterable[Manifest], namespace: str | None) -> Manifest:
    """A ``kustomization.yaml`` listing the given objects' files.

    Example:
        >>> kustomization([{"kind": "Service"}], "recsys")["resources"]
        ['service.yaml']
    """
    out: Manifest = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        out["namespace"] = namespace
    out["resources"] = [file_name(m) for m in manifests]
    return out


def target_manifests(target: str, opts: DeployOptions, location: RepositoryLocation,
                     resources: Resources) -> list[Manifest]:
    """The objects of one target, ``"triton"`` (plain) or ``"kserve"``."""
    if target == "triton":
        return [workloads.deployment(opts, location, resources), workloads.service(opts),
                workloads.horizontal_pod_autoscaler(opts),
                workloads.pod_disruption_budget(opts)]
    if target == "kserve":
        isvc = kserve.inference_service(opts, location, resources)
        return [kserve.service_account(opts), isvc] if location.is_remote else [isvc]
    raise ExportError(f"Unknown target {target!r}: expected one of {', '.join(TARGETS)}.")


def plan_deployment(opts: DeployOptions, location: RepositoryLocation,
                    sizing: Sequence[ModelSizing], targets: Sequence[str] = TARGETS, *,
                    resources: Resources | None = None) -> dict[str, Manifest]:
    """All objects to write, keyed by their path relative to the output folder.

    ``resources`` defaults to `size_resources` of ``sizing`` with the default constants.
    """
    names = {s.name for s in sizing}
    if names != set(opts.models):
        raise ExportError(f"Sizes given for {sorted(names)}, but deploying {list(opts.models)}.")
    resources = resources or size_resources(sizing)
    plan: dict[str, Manifest] = {}
    for target in targets:
        objects = target_manifests(target, opts, location, resources)
        for manifest in objects:
            plan[f"{target}/{file_name(manifest)}"] = manifest
        plan[f"{target}/kustomization.yaml"] = kustomization(objects, opts.namespace)
    return plan


def to_yaml(manifest: Manifest) -> str:
    """One object as block-style YAML, keys in build order.

    Example:
        >>> print(to_yaml({"kind": "Service", "metadata": {"name": "x"}}), end="")
        kind: Service
        metadata:
          name: x
    """
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def write_manifests(out: str | os.PathLike[str], plan: Mapping[str, Manifest]) -> list[Path]:
    """Writes ``plan`` under ``out`` (creating folders; our files are replaced)."""
    root = Path(out)
    written = []
    for relative, manifest in sorted(plan.items()):
        path = root / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_yaml(manifest), encoding="utf-8")
        except OSError as error:
            raise ExportError(f"Cannot write {path}: {error}") from error
        written.append(path)
    return written
