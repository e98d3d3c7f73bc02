"""Kubernetes manifests for tritonserver replicas serving a published model repository.

Two ways, one folder each: plain objects (Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget) under ``<out>/triton/``, and a KServe InferenceService on KServe's
tritonserver runtime under ``<out>/kserve/``. Built as dicts by small functions
(`export.deploy.workloads`, `export.deploy.inference_service`), sized from the export's
manifests (`export.deploy.sizing`), written as YAML with a kustomization per folder.

Example:
    >>> from export.deploy import DeployOptions, parse_repository
    >>> parse_repository("s3://models/recsys").triton_url()
    's3://models/recsys'
"""

from export.deploy.api import DeployResult, deploy, resolve_sizing
from export.deploy.location import RepositoryLocation, parse_repository
from export.deploy.manifests import TARGETS, plan_deployment, write_manifests
from export.deploy.options import DeployOptions
from export.deploy.sizing import ModelSizing, Resources, read_model_sizing, size_resources

__all__ = [
    "TARGETS",
    "DeployOptions",
    "DeployResult",
    "ModelSizing",
    "RepositoryLocation",
    "Resources",
    "deploy",
    "parse_repository",
    "plan_deployment",
    "read_model_sizing",
    "resolve_sizing",
    "size_resources",
    "write_manifests",
]
