"""Plain Kubernetes objects for tritonserver replicas: Deployment, Service, HPA, PDB.

Each builder returns the object as a dict, ready for ``yaml.safe_dump``. The server runs
with ``--model-control-mode=explicit`` and one ``--load-model`` per model: it never
polls the (object-storage) repository. A (re)started pod loads the version the store's
``config.pbtxt`` pins (`export.storage.serving`), never a half-uploaded one; a new version
is rolled out with ``kmr-export rollout --repo s3://...``, which moves the pin. Probes
use Triton's health endpoints on the HTTP port: startup and readiness on
``/v2/health/ready`` (true once every model loaded), liveness on ``/v2/health/live``.

Example:
    >>> from export.deploy.location import parse_repository
    >>> from export.deploy.options import DeployOptions
    >>> from export.deploy.sizing import Resources
    >>> opts = DeployOptions(models=("mf_retrieve",))
    >>> dep = deployment(opts, parse_repository("s3://models/recsys"), Resources(2**30, 1250))
    >>> c = dep["spec"]["template"]["spec"]["containers"][0]
    >>> c["args"][:3]
    ['--model-repository=s3://models/recsys', '--model-control-mode=explicit', \
'--load-model=mf_retrieve']
    >>> c["readinessProbe"]["httpGet"]
    {'path': '/v2/health/ready', 'port': 'http'}
"""

from __future__ import annotations

from typing import Any

from export.deploy.location import RepositoryLocation
from export.deploy.options import GRPC_PORT, HTTP_PORT, METRICS_PORT, DeployOptions
from export.deploy.sizing import Resources

READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
REPOSITORY_MOUNT = "/models"
GCS_KEY = "gcloud-application-credentials.json"  # the key KServe's GCS secrets use
GCS_MOUNT = "/var/secrets/gcs"
STARTUP_SECONDS = 600  # time to fetch the repository and load the models

Manifest = dict[str, Any]


def labels(opts: DeployOptions) -> dict[str, str]:
    """The selector labels every object shares.

    Example:
        >>> from export.deploy.options import DeployOptions
        >>> labels(DeployOptions(models=("mf",)))["app.kubernetes.io/instance"]
        'triton-mf'
    """
    return {"app.kubernetes.io/name": "tritonserver", "app.kubernetes.io/instance": opts.name}


def metadata(opts: DeployOptions, name: str | None = None) -> Manifest:
    """An object's metadata: its name and the common labels."""
    return {"name": name or opts.name,
            "labels": {**labels(opts), "app.kubernetes.io/part-of": "kmr",
                       "app.kubernetes.io/managed-by": "kmr-export"}}


def triton_args(opts: DeployOptions, location: RepositoryLocation) -> list[str]:
    """tritonserver's arguments: the repository, explicit model control, the ports."""
    return [
        f"--model-repository={location.triton_url(REPOSITORY_MOUNT)}",
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in opts.models),
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
    ]


def credentials_env(opts: DeployOptions, location: RepositoryLocation) -> list[Manifest]:
    """Environment variables taking the storage credentials from ``opts.secret``.

    Example:
        >>> from export.deploy.location import parse_repository
        >>> from export.deploy.options import DeployOptions
        >>> env = credentials_env(DeployOptions(models=("mf",)), parse_repository("s3://bkt/r"))
        >>> [(e["name"], e["valueFrom"]["secretKeyRef"]["optional"]) for e in env][:2]
        [('AWS_ACCESS_KEY_ID', False), ('AWS_SECRET_ACCESS_KEY', False)]
    """
    if location.scheme == "gs":
        return [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_MOUNT}/{GCS_KEY}"}]
    if location.scheme != "s3":
        return []
    keys = [("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_DEFAULT_REGION", True), ("AWS_SESSION_TOKEN", True)]
    return [{"name": key, "valueFrom": {"secretKeyRef": {
        "name": opts.secret, "key": key, "optional": optional}}} for key, optional in keys]


def _http_probe(path: str, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _volumes(opts: DeployOptions,
             location: RepositoryLocation) -> tuple[list[Manifest], list[Manifest]]:
    """(pod volumes, container mounts) for a PVC repository or a GCS key file."""
    if location.scheme == "file":
        return ([{"name": "model-repository",
                  "persistentVolumeClaim": {"claimName": opts.pvc, "readOnly": True}}],
                [{"name": "model-repository", "mountPath": REPOSITORY_MOUNT, "readOnly": True}])
    if location.scheme == "gs":
        return ([{"name": "gcs-credentials", "secret": {"secretName": opts.secret}}],
                [{"name": "gcs-credentials", "mountPath": GCS_MOUNT, "readOnly": True}])
    return [], []


def container(opts: DeployOptions, location: RepositoryLocation, resources: Resources,
              mounts: list[Manifest]) -> Manifest:
    """The tritonserver container: image, args, ports, credentials, resources, probes."""
    spec: Manifest = {
        "name": "tritonserver",
        "image": opts.image,
        "command": ["tritonserver"],
        "args": triton_args(opts, location),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": credentials_env(opts, location),
        "resources": resources.as_kubernetes(),
        "startupProbe": _http_probe(READY_PATH, 10, STARTUP_SECONDS // 10),
        "readinessProbe": _http_probe(READY_PATH, 5, 3),
        "livenessProbe": _http_probe(LIVE_PATH, 10, 3),
        # Let the endpoints controller drop the pod before tritonserver stops accepting.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if mounts:
        spec["volumeMounts"] = mounts
    return spec


def deployment(opts: DeployOptions, location: RepositoryLocation,
               resources: Resources) -> Manifest:
    """The Deployment (``apps/v1``); ``replicas`` is left to the HPA.

    Example:
        >>> from export.deploy.location import parse_repository
        >>> from export.deploy.options import DeployOptions
        >>> from export.deploy.sizing import Resources
        >>> d = deployment(DeployOptions(models=("mf",), pvc="repo"),
        ...                parse_repository("/srv/repo"), Resources(2**30, 1250))
        >>> d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
        {'claimName': 'repo', 'readOnly': True}
    """
    if location.scheme == "file" and not opts.pvc:
        location.storage_uri(opts.pvc)  # raises the "give --pvc" error
    volumes, mounts = _volumes(opts, location)
    pod: Manifest = {
        "containers": [container(opts, location, resources, mounts)],
        "terminationGracePeriodSeconds": 40,  # Triton's --exit-timeout-secs is 30
        "automountServiceAccountToken": False,  # tritonserver never calls the API server
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": labels(opts)},
        }],
    }
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(opts),
        "spec": {
            "selector": {"matchLabels": labels(opts)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels(opts), "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
                "spec": pod,
            },
        },
    }


def service(opts: DeployOptions) -> Manifest:
    """A ClusterIP Service over the HTTP, gRPC and metrics ports."""
    ports = [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
             for name, port in (("http", HTTP_PORT), ("grpc", GRPC_PORT),
                                ("metrics", METRICS_PORT))]
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(opts),
            "spec": {"type": "ClusterIP", "selector": labels(opts), "ports": ports}}


def horizontal_pod_autoscaler(opts: DeployOptions) -> Manifest:
    """An ``autoscaling/v2`` HPA on average CPU utilisation, scaling down slowly."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(opts),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": opts.name},
            "minReplicas": opts.min_replicas,
            "maxReplicas": opts.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": opts.target_cpu_percent}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def pod_disruption_budget(opts: DeployOptions) -> Manifest:
    """A ``policy/v1`` PDB: voluntary disruptions (drains) take one replica at a time."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(opts),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(opts)}}}
