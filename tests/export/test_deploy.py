"""``kmr-export deploy``: manifests checked against the Kubernetes 1.30 schemas
(kubernetes-validate, strict: unknown fields fail) and KServe's resource model (the
``kserve`` SDK's V1beta1 classes, walked strictly: unknown keys and wrong types fail)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from export.cli import main
from export.deploy import DeployOptions, ModelSizing, deploy, parse_repository, plan_deployment
from export.deploy.sizing import (
    BASE_CPU_MILLIS,
    BASE_MEMORY_BYTES,
    CPU_PER_INSTANCE_MILLIS,
    MEMORY_FACTOR,
    write_demo_model,
)
from export.errors import ExportError

K8S_VERSION = "1.30.0"
MODEL = "mf_retrieve"


def validate_kubernetes(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# kserve's gRPC protos (kserve.protocol.grpc) and tritonclient.grpc's register the same
# symbols ('inference.ServerLiveRequest') in protobuf's default pool: the two packages
# cannot be imported into one process. So KServe's model is checked in a fresh
# interpreter that imports kserve and the kubernetes client only, never export.
_KSERVE_CHECK = r"""
import json, re, sys
import kserve.models, kubernetes.client.models

# kserve spells containers list[T], dict(K, V); kubernetes 37 spells them List[T], Dict[K, V]
LIST = re.compile(r"^[Ll]ist\[(.*)\]$")
DICT = re.compile(r"^(?:dict\([^,]*, (.*)\)|Dict\[[^,]*, (.*)\])$")
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}

def build(data, type_name, path):
    if (m := LIST.match(type_name)):
        assert isinstance(data, list), f"{path}: expected a list"
        return [build(v, m[1], f"{path}[{i}]") for i, v in enumerate(data)]
    if (m := DICT.match(type_name)):
        assert isinstance(data, dict), f"{path}: expected a map"
        return {k: build(v, m[1] or m[2], f"{path}.{k}") for k, v in data.items()}
    if type_name in PRIMITIVES:
        ok = isinstance(data, PRIMITIVES[type_name])
        assert ok and (type_name == "bool" or not isinstance(data, bool)), \
            f"{path}: expected {type_name}, got {data!r}"
        return data
    if type_name == "object":
        return data
    module = kserve.models if hasattr(kserve.models, type_name) else kubernetes.client.models
    klass = getattr(module, type_name)
    assert isinstance(data, dict), f"{path}: expected an object ({type_name})"
    by_json = {key: attr for attr, key in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    assert not unknown, f"{path}: {type_name} has no field {unknown}"
    return klass(**{by_json[k]: build(v, klass.openapi_types[by_json[k]], f"{path}.{k}")
                    for k, v in data.items()})  # the SDK checks required fields here

results = []
for doc in json.load(sys.stdin):
    try:
        build(doc, "V1beta1InferenceService", "")
        results.append(None)
    except (AssertionError, ValueError, TypeError) as error:
        results.append(f"{type(error).__name__}: {error}")
assert "tritonclient.grpc" not in sys.modules
print(json.dumps(results))
"""


def kserve_errors(*docs: dict[str, Any]) -> list[str | None]:
    """Per InferenceService: None if KServe's V1beta1 model accepts it, else why not."""
    done = subprocess.run([sys.executable, "-c", _KSERVE_CHECK], input=json.dumps(docs),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def validate_kserve(doc: dict[str, Any]) -> dict[str, Any]:
    assert kserve_errors(doc) == [None]
    return doc


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_demo_model(root, MODEL, instances=2, version=1)
    write_demo_model(root, MODEL, instances=2, version=3)  # the newest: its manifest counts
    manifest = root / MODEL / "3" / "export_manifest.json"
    facts = json.loads(manifest.read_text())
    facts.update(num_users=1000, num_items=3000, embedding_dim=16)
    manifest.write_text(json.dumps(facts))
    return root


def _plan(repo_url: str = "s3://models/recsys", **opts: Any) -> dict[str, dict[str, Any]]:
    sizing = [ModelSizing(MODEL, instances=2, table_bytes=64 << 20)]
    return plan_deployment(DeployOptions(models=(MODEL,), **opts), parse_repository(repo_url),
                           sizing)


def _container(plan: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return plan["triton/deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("url", ["s3://models/recsys", "s3://https://minio.local:9000/models/r",
                                 "gs://models/recsys"])
def test_plain_manifests_validate_against_kubernetes_schemas(url: str) -> None:
    plan = _plan(url)
    kinds = sorted(m["kind"] for k, m in plan.items() if k.startswith("triton/"))
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Kustomization",
                     "PodDisruptionBudget", "Service"]
    for manifest in plan.values():
        if manifest["kind"] not in ("Kustomization", "InferenceService"):
            validate_kubernetes(manifest)


def test_inference_service_validates_against_kserve_model() -> None:
    plan = _plan("s3://minio:9000/models/recsys")
    isvc = validate_kserve(plan["kserve/inferenceservice.yaml"])
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["storageUri"] == "s3://models/recsys"  # KServe: endpoint goes on the Secret
    assert "--model-control-mode=explicit" in model["args"]
    assert f"--load-model={MODEL}" in model["args"]
    assert model["resources"] == _container(plan)["resources"]
    sa = plan["kserve/serviceaccount.yaml"]
    validate_kubernetes(sa)
    assert predictor["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["secrets"] == [{"name": "kmr-storage-credentials"}]


def test_validators_reject_broken_manifests() -> None:
    """The checks above can fail: a typo'd field, a wrong type, a missing required field."""
    plan = _plan()
    typo = copy.deepcopy(plan["triton/deployment.yaml"])
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="pathh"):
        validate_kubernetes(typo)
    hpa = copy.deepcopy(plan["triton/horizontalpodautoscaler.yaml"])
    hpa["spec"]["maxReplicas"] = "4"
    with pytest.raises(kubernetes_validate.ValidationError, match="'4' is not of type"):
        validate_kubernetes(hpa)
    good = plan["kserve/inferenceservice.yaml"]
    bad_key, no_format, bad_type = (copy.deepcopy(good) for _ in range(3))
    bad_key["spec"]["predictor"]["model"]["storageURI"] = "s3://x/y"
    del no_format["spec"]["predictor"]["model"]["modelFormat"]  # required by the model
    bad_type["spec"]["predictor"]["minReplicas"] = "2"
    ok, *errors = kserve_errors(good, bad_key, no_format, bad_type)
    assert ok is None
    assert "storageURI" in errors[0]
    assert errors[1].startswith("ValueError") and "model_format" in errors[1]
    assert "minReplicas" in errors[2]


def test_probes_ports_and_explicit_model_control() -> None:
    c = _container(_plan())
    assert c["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("startupProbe", "/v2/health/ready"),
                        ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    args = c["args"]
    assert "--model-repository=s3://models/recsys" in args
    assert "--model-control-mode=explicit" in args and f"--load-model={MODEL}" in args
    assert not any(a.startswith(("--repository-poll-secs", "--model-control-mode=poll"))
                   for a in args)
    tag = _container(_plan(triton_tag="25.01"))["image"]
    assert tag == "nvcr.io/nvidia/tritonserver:25.01-py3"


def test_credentials_come_from_the_named_secret() -> None:
    env = {e["name"]: e for e in _container(_plan(secret="minio-creds"))["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "minio-creds", "key": key, "optional": False}
    assert env["AWS_DEFAULT_REGION"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any("value" in e for e in env.values())  # no credential in the manifest
    gcs = _plan("gs://models/recsys", secret="gcs-key")
    pod = gcs["triton/deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["secret"] == {"secretName": "gcs-key"}
    assert _container(gcs)["env"][0]["name"] == "GOOGLE_APPLICATION_CREDENTIALS"


def test_s3_endpoint_is_spelled_the_way_triton_reads_it() -> None:
    plan = plan_deployment(DeployOptions(models=(MODEL,)),
                           parse_repository("s3://models/recsys", s3_endpoint="http://minio:9000"),
                           [ModelSizing(MODEL, instances=1, table_bytes=1)])
    assert "--model-repository=s3://minio:9000/models/recsys" in _container(plan)["args"]
    https = parse_repository("s3://models/recsys", s3_endpoint="https://s3.example.com")
    assert https.triton_url() == "s3://https://s3.example.com:443/models/recsys"


def test_resources_scale_with_instances_and_tables(repo: Path, tmp_path: Path) -> None:
    def requests(instances: int | None = None, table_bytes: int | None = None) -> dict:
        result = deploy("s3://models/recsys", tmp_path / "out", DeployOptions(models=(MODEL,)),
                        from_local=repo, instances=instances, table_bytes=table_bytes)
        doc = yaml.safe_load((tmp_path / "out/triton/deployment.yaml").read_text())
        res = doc["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"] == res["requests"]
        return {"result": result, **res["requests"]}

    from_config = requests()
    s = from_config["result"].sizing[0]
    assert s.instances == 2  # config.pbtxt's instance_group
    assert s.table_bytes == 4 * (1000 + 3000) * 16  # the newest version's manifest
    assert s.workspace_bytes == 4 * 6 * 3000  # retrieve: max_batch_size x num_items scores
    expected = BASE_MEMORY_BYTES + 2 * (MEMORY_FACTOR * s.table_bytes + s.workspace_bytes)
    assert from_config["memory"] == f"{-(-int(expected) // (1 << 20))}Mi"
    assert from_config["cpu"] == f"{BASE_CPU_MILLIS + 2 * CPU_PER_INSTANCE_MILLIS}m"
    four = requests(instances=4, table_bytes=256 << 20)
    assert four["cpu"] == f"{BASE_CPU_MILLIS + 4 * CPU_PER_INSTANCE_MILLIS}m"
    grown = BASE_MEMORY_BYTES + 4 * (MEMORY_FACTOR * (256 << 20) + s.workspace_bytes)
    assert four["memory"] == f"{-(-int(grown) // (1 << 20))}Mi"
    assert int(four["memory"][:-2]) > 4 * int(from_config["memory"][:-2]) // 2


@pytest.mark.parametrize("url", ["http://host/repo", "https://bucket.s3.amazonaws.com/r",
                                 "az://container/repo", "s3:/models/recsys", "hdfs://nn/repo",
                                 "s3://", "s3://A/upper"])
def test_refuses_unsupported_or_malformed_urls(url: str) -> None:
    with pytest.raises(ExportError, match="Unsupported repository URL|no valid bucket"):
        parse_repository(url)


def test_local_repository_needs_a_pvc(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--pvc"):
        deploy(str(repo), tmp_path / "out", DeployOptions(models=(MODEL,)))
    assert not (tmp_path / "out").exists()  # nothing half-written
    result = deploy(f"file://{repo}", tmp_path / "out", DeployOptions(models=(MODEL,), pvc="m"))
    assert result.sizing[0].instances == 2
    dep = yaml.safe_load((tmp_path / "out/triton/deployment.yaml").read_text())
    validate_kubernetes(dep)
    assert "--model-repository=/models" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    isvc = validate_kserve(yaml.safe_load((tmp_path / "out/kserve/inferenceservice.yaml")
                                          .read_text()))
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://m"
    assert "serviceAccountName" not in isvc["spec"]["predictor"]  # no storage credentials


def test_unknown_model_names_the_available_ones(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"'mf' is not in repository .*it has: mf_retrieve"):
        deploy("s3://models/recsys", tmp_path / "out", DeployOptions(models=("mf",)),
               from_local=repo)


def test_remote_repository_without_sizes_names_what_is_missing(tmp_path: Path) -> None:
    opts = DeployOptions(models=(MODEL,))
    with pytest.raises(ExportError, match="--from-local DIR.*--table-bytes and --instances"):
        deploy("gs://models/recsys", tmp_path / "out", opts)
    with pytest.raises(ExportError, match="no --instances"):
        deploy("gs://models/recsys", tmp_path / "out", opts, table_bytes=1 << 20)
    result = deploy("gs://models/recsys", tmp_path / "out", opts, table_bytes=1 << 20,
                    instances=3)
    assert result.sizing[0].instances == 3


def test_cli_writes_yaml_per_kind_and_kustomizations(repo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k8s"
    code = main(["deploy", "--repo", "s3://models/recsys", "--name", MODEL, "--out", str(out),
                 "--from-local", str(repo), "--namespace", "recsys", "--max-replicas", "6"])
    assert code == 0
    for folder in ("triton", "kserve"):
        kustomization = yaml.safe_load((out / folder / "kustomization.yaml").read_text())
        assert kustomization["namespace"] == "recsys"
        for name in kustomization["resources"]:
            doc = yaml.safe_load((out / folder / name).read_text())
            assert name == f"{doc['kind'].lower()}.yaml"
            if doc["kind"] == "InferenceService":
                assert validate_kserve(doc)["spec"]["predictor"]["maxReplicas"] == 6
            else:
                validate_kubernetes(doc)
    assert "kubectl apply -k" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--repo", "ftp://h/r", "--name", MODEL], "Unsupported repository URL"),
    (["--repo", "s3://models/r", "--name", MODEL], "--from-local DIR"),
    (["--repo", "s3://models/r", "--name", "nope", "--from-local", "{repo}"], "'nope' is not"),
    (["--repo", "s3://models/r", "--name", MODEL, "--instances", "1", "--table-bytes", "1",
      "--min-replicas", "5", "--max-replicas", "2"], "Invalid replicas"),
    (["--repo", "s3://models/r", "--name", MODEL, "--instances", "1", "--table-bytes", "1",
      "--triton-tag", "latest"], "Invalid tritonserver tag"),
])
def test_cli_errors_exit_1(argv: list[str], message: str, repo: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    argv = [a.replace("{repo}", str(repo)) for a in argv]
    assert main(["deploy", *argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_real_export_both_graphs_sized_and_loaded_together(tmp_path: Path) -> None:
    """Reads what `export_model` really writes (graph='both': two models in one server)."""
    from export.api import ExportOptions, export_model
    from kmr.models import build_recommender

    repo = tmp_path / "repo"
    export_model(build_recommender(50, 200, 8), str(repo), ExportOptions(name="mf", graph="both",
                                                                         k=5))
    with pytest.raises(ExportError, match="it has: mf_rerank, mf_retrieve"):
        deploy("s3://models/recsys", tmp_path / "out", DeployOptions(models=("mf",)),
               from_local=repo)
    opts = DeployOptions(models=("mf_retrieve", "mf_rerank"))
    result = deploy("s3://models/recsys", tmp_path / "out", opts, from_local=repo)
    assert [s.table_bytes for s in result.sizing] == [4 * 250 * 8] * 2
    assert [s.instances for s in result.sizing] == [1, 1]
    assert result.resources.cpu_millis == BASE_CPU_MILLIS + 2 * CPU_PER_INSTANCE_MILLIS
    dep = yaml.safe_load((tmp_path / "out/triton/deployment.yaml").read_text())
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--load-model")] == [
        "--load-model=mf_retrieve", "--load-model=mf_rerank"]
    validate_kubernetes(dep)


def test_cli_sizing_constants_and_kserve_endpoint_hint(repo: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    base = ["deploy", "--repo", "s3://minio:9000/models/recsys", "--name", MODEL,
            "--from-local", str(repo), "--target", "kserve"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "serving.kserve.io/s3-endpoint=minio:9000" in capsys.readouterr().out
    assert not (tmp_path / "a/triton").exists()
    assert main([*base, "--out", str(tmp_path / "b"), "--memory-factor", "4",
                 "--base-memory-mib", "1024"]) == 0

    def memory(folder: str) -> int:
        doc = yaml.safe_load((tmp_path / folder / "kserve/inferenceservice.yaml").read_text())
        return int(doc["spec"]["predictor"]["model"]["resources"]["requests"]["memory"][:-2])

    table_mib = 4 * (1000 + 3000) * 16 / (1 << 20)
    assert memory("b") - memory("a") == pytest.approx(512 + 2 * 2 * table_mib, abs=1)


def test_sizing_counts_the_raw_id_lookups_each_vocabulary_got(tmp_path: Path):
    from export.api import ExportOptions, export_model
    from export.deploy.sizing import ID_LOOKUP_BYTES_PER_ID, read_model_sizing
    from tests.support.export_helpers import save_artifacts, tiny_model

    users, items = [10**9 + 3 * i for i in range(40)], [5 * i + 1 for i in range(60)]
    path = save_artifacts(tiny_model(len(users), len(items), 4), tmp_path / "art", users, items)
    sizes = {}
    for ids in ("raw", "index"):
        repo = tmp_path / ids
        export_model(path, repo, ExportOptions(name="m", graph="both", k=3, ids=ids))
        sizes[ids] = {kind: read_model_sizing(repo, f"m_{kind}").table_bytes
                      for kind in ("rerank", "retrieve")}
    per_id = ID_LOOKUP_BYTES_PER_ID
    # auto: LabelEncoder in the rerank graph, the compact lookup in the retrieve graph
    assert sizes["raw"]["rerank"] - sizes["index"]["rerank"] == 100 * per_id["label_encoder"]
    assert sizes["raw"]["retrieve"] - sizes["index"]["retrieve"] == 100 * per_id["compact"]
