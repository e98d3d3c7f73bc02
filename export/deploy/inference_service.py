"""A KServe ``InferenceService`` on KServe's tritonserver runtime, and its ServiceAccount.

KServe's storage initializer copies ``storageUri`` (the repository root) into the pod
before tritonserver starts, so the server reads a local folder; the model is still
loaded with explicit model control so that only the named models are served.
Credentials reach the storage initializer the way KServe expects: the predictor runs
under a ServiceAccount that lists the credentials Secret (for a non-AWS S3 store, the
Secret also carries the ``serving.kserve.io/s3-endpoint`` annotations; see
`s3_secret_annotations`).

Example:
    >>> from export.deploy.location import parse_repository
    >>> from export.deploy.options import DeployOptions
    >>> from export.deploy.sizing import Resources
    >>> isvc = inference_service(DeployOptions(models=("mf",)),
    ...                          parse_repository("s3://models/recsys"), Resources(2**30, 1250))
    >>> model = isvc["spec"]["predictor"]["model"]
    >>> model["modelFormat"], model["storageUri"], model["runtimeVersion"]
    ({'name': 'triton'}, 's3://models/recsys', '24.10-py3')
"""

from __future__ import annotations

from urllib.parse import urlsplit

from export.deploy.location import RepositoryLocation
from export.deploy.options import DeployOptions
from export.deploy.sizing import Resources
from export.deploy.workloads import Manifest, metadata


def service_account_name(opts: DeployOptions) -> str:
    """The predictor's ServiceAccount: ``<name>-storage``."""
    return f"{opts.name}-storage"


def service_account(opts: DeployOptions) -> Manifest:
    """A ServiceAccount listing the credentials Secret (KServe reads it from there).

    Example:
        >>> from export.deploy.options import DeployOptions
        >>> service_account(DeployOptions(models=("mf",), secret="s3creds"))["secrets"]
        [{'name': 's3creds'}]
    """
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(opts, service_account_name(opts)),
            "secrets": [{"name": opts.secret}]}


def s3_secret_annotations(location: RepositoryLocation) -> dict[str, str]:
    """The annotations KServe's storage initializer reads from the S3 credentials Secret.

    Example:
        >>> from export.deploy.location import parse_repository
        >>> s3_secret_annotations(parse_repository("s3://minio:9000/bkt/repo"))
        {'serving.kserve.io/s3-endpoint': 'minio:9000', 'serving.kserve.io/s3-usehttps': '0'}
    """
    if location.scheme != "s3" or not location.endpoint:
        return {}
    split = urlsplit(location.endpoint)
    return {"serving.kserve.io/s3-endpoint": split.netloc,
            "serving.kserve.io/s3-usehttps": "1" if split.scheme == "https" else "0"}


def inference_service(opts: DeployOptions, location: RepositoryLocation,
                      resources: Resources) -> Manifest:
    """The ``serving.kserve.io/v1beta1`` InferenceService (``modelFormat: triton``)."""
    model: Manifest = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "runtimeVersion": opts.runtime_version,
        "storageUri": location.storage_uri(opts.pvc),
        "args": ["--model-control-mode=explicit",
                 *(f"--load-model={name}" for name in opts.models),
                 "--strict-readiness=true"],
        "resources": resources.as_kubernetes(),
    }
    predictor: Manifest = {
        "minReplicas": opts.min_replicas,
        "maxReplicas": opts.max_replicas,
        "scaleMetric": "cpu",
        "scaleTarget": opts.target_cpu_percent,
        "model": model,
    }
    if location.is_remote:
        predictor["serviceAccountName"] = service_account_name(opts)
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": metadata(opts), "spec": {"predictor": predictor}}
