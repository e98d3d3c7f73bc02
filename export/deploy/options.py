"""What a deployment is asked to be: names, image, credentials, scaling.

Example:
    >>> opts = DeployOptions(models=("mf_retrieve",))
    >>> opts.name, opts.image
    ('triton-mf-retrieve', 'nvcr.io/nvidia/tritonserver:24.10-py3')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from export.errors import ExportError

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_TRITON_TAG = "24.10"  # Triton 2.51, the release the local server runs
DEFAULT_SECRET = "kmr-storage-credentials"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1035 (Services need it)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TAG = re.compile(r"^\d{2}\.\d{2}$")
_MODEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def default_name(models: tuple[str, ...]) -> str:
    """A Kubernetes name for the served models: ``triton-`` + the first, DNS-safe.

    Example:
        >>> default_name(("MF_retrieve", "mf_rerank"))
        'triton-mf-retrieve'
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", models[0].lower()).strip("-")
    return f"triton-{slug}"[:45].rstrip("-")  # KServe derives longer names from it


@dataclass(frozen=True)
class DeployOptions:
    """Options of `export.deploy.build_manifests`.

    Attributes:
        models: Triton model names to load (``--load-model`` each), in order.
        app_name: Name of every object; default `default_name` of ``models``.
        namespace: Namespace for the kustomizations; None leaves it to ``kubectl``.
        triton_tag: NGC release of the tritonserver image (``YY.MM``; ``-py3`` is added).
        secret: Secret with the storage credentials (keys ``AWS_ACCESS_KEY_ID``,
            ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_DEFAULT_REGION``,
            ``AWS_SESSION_TOKEN``; for gs:// ``gcloud-application-credentials.json``).
        pvc: PersistentVolumeClaim holding a local repository.
        min_replicas, max_replicas: HorizontalPodAutoscaler bounds (and KServe's).
        target_cpu_percent: Average CPU utilisation (of the request) the HPA keeps.
    """

    models: tuple[str, ...]
    app_name: str | None = None
    namespace: str | None = None
    triton_tag: str = DEFAULT_TRITON_TAG
    secret: str = DEFAULT_SECRET
    pvc: str | None = None
    min_replicas: int = 2
    max_replicas: int = 4
    target_cpu_percent: int = 70

    def __post_init__(self) -> None:
        if not self.models:
            raise ExportError("No model to deploy: give --name MODEL.")
        for model in self.models:
            if not _MODEL.match(model) or model.isdigit():
                raise ExportError(f"Invalid model name {model!r}: expected a Triton model "
                                  "folder name (letters, digits, '_', '-', '.').")
        _check_dns(self.name, "name", _DNS_LABEL)
        _check_dns(self.secret, "secret", _DNS_SUBDOMAIN)
        for label, value in (("namespace", self.namespace), ("pvc", self.pvc)):
            if value is not None:
                _check_dns(value, label, _DNS_LABEL if label == "namespace" else _DNS_SUBDOMAIN)
        if not _TAG.match(self.triton_tag):
            raise ExportError(f"Invalid tritonserver tag {self.triton_tag!r}: expected an "
                              "NGC release like 24.10 (the image is <tag>-py3).")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ExportError(f"Invalid replicas: need 1 <= min ({self.min_replicas}) <= "
                              f"max ({self.max_replicas}).")
        if not 1 <= self.target_cpu_percent <= 100:
            raise ExportError(f"Invalid target CPU {self.target_cpu_percent}%: expected 1..100.")

    @property
    def name(self) -> str:
        """The objects' name."""
        return self.app_name or default_name(self.models)

    @property
    def image(self) -> str:
        """The tritonserver image (the ``-py3`` build ships the onnxruntime backend)."""
        return f"{TRITON_IMAGE}:{self.triton_tag}-py3"

    @property
    def runtime_version(self) -> str:
        """KServe's ``runtimeVersion``: the image tag."""
        return f"{self.triton_tag}-py3"


def _check_dns(value: str, what: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(value) or len(value) > 253:
        raise ExportError(f"Invalid {what} {value!r}: expected a lowercase DNS name "
                          "(letters, digits and '-', starting with a letter).")
