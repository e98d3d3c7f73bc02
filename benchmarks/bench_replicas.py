"""Throughput vs number of Triton replicas behind nginx, and a rollout's effect on p99.

Real parts on loopback: 1-3 local tritonservers (python backend, explicit model control)
on one shared repository, a real nginx (gRPC, ``grpc_pass``) in front, and threads of raw
tritonclient gRPC whose every answer is checked against onnxruntime. Writes
``benchmarks/results/replicas.{json,md}``. About 2 minutes.

Run: ``.venv/bin/python benchmarks/bench_replicas.py [--seconds 8] [--threads 8]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.rollout import rollout  # noqa: E402
from export.rollout.canary import canary_cases  # noqa: E402
from export.triton.local_server import LocalTritonServer  # noqa: E402
from tests.support.load_balancer import CheckedLoad, NginxBalancer  # noqa: E402

NAME = "ro"
RESULTS = Path(__file__).resolve().parent / "results"


def _export(root: Path, repo: Path, seed: int) -> Path:
    from export.api import ExportOptions, export_model
    from tests.support.export_helpers import save_artifacts, tiny_model

    model_path = save_artifacts(tiny_model(seed=seed), root / f"artifacts-{seed}")
    options = ExportOptions(name=NAME, graph="rerank", k=5, backend="python")
    return export_model(model_path, repo, options).models[0].version_dir


def _stats(load: CheckedLoad, seconds: float, since: float = 0.0) -> dict:
    lat = np.array([d for t, d in load.latencies if t >= since]) * 1000
    return {"requests_per_s": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "ok": load.ok, "wrong": load.wrong, "failed": load.failed}


def scaling(servers: list, refs: dict, seconds: float, threads: int) -> list[dict]:
    """Checked load through nginx over the first 1, 2, 3 replicas."""
    rows = []
    for count in range(1, len(servers) + 1):
        with NginxBalancer([s.grpc_url for s in servers[:count]]) as lb:
            with CheckedLoad(lb.grpc_url, NAME, refs, threads=threads) as load:
                time.sleep(1.0)  # warm-up, not counted
                start = time.monotonic()
                time.sleep(seconds)
            rows.append({"replicas": count, **_stats(load, seconds, start)})
        print(rows[-1], flush=True)
    return rows


def rollout_p99(servers: list, repo: Path, refs: dict, seconds: float,
                threads: int) -> dict:
    """p99 with no rollout vs while rollouts 2 -> 1 -> 2 run (nginx drains each replica)."""
    urls = [s.grpc_url for s in servers]
    with NginxBalancer(urls) as lb, CheckedLoad(lb.grpc_url, NAME, refs, threads=threads) as load:
        time.sleep(1.0)
        base_start = time.monotonic()
        time.sleep(seconds)
        roll_start = time.monotonic()
        reports = []
        while time.monotonic() - roll_start < seconds:
            for version in (1, 2):
                reports.append(rollout(urls, NAME, version, repo=repo,
                                       before_each=lb.drain, after_each=lb.undrain))
        roll_end = time.monotonic()
    lat = [(t, d * 1000) for t, d in load.latencies]
    base = [d for t, d in lat if base_start <= t < roll_start]
    roll = [d for t, d in lat if roll_start <= t < roll_end]
    return {"replicas": len(urls), "rollouts": len(reports),
            "all_completed": all(r.completed for r in reports),
            "seconds_per_replica": round(float(np.mean(
                [x.seconds for r in reports for x in r.replicas])), 2),
            "p99_ms_steady": round(float(np.percentile(base, 99)), 2),
            "p99_ms_during_rollouts": round(float(np.percentile(roll, 99)), 2),
            "rps_steady": round(len(base) / seconds, 1),
            "rps_during_rollouts": round(len(roll) / (roll_end - roll_start), 1),
            "wrong": load.wrong, "failed": load.failed}


def _markdown(result: dict) -> str:
    lines = ["# Replicas behind nginx (gRPC), python backend, tiny rerank model", "",
             f"Machine: {result['cpus']} CPUs; {result['threads']} client threads; "
             f"{result['seconds']} s per point; every answer checked against onnxruntime.", "",
             "| replicas | req/s | p50 ms | p99 ms | wrong | failed |", "|---|---|---|---|---|---|"]
    for r in result["scaling"]:
        lines.append(f"| {r['replicas']} | {r['requests_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['wrong']} | {r['failed']} |")
    ro = result["rollout"]
    lines += ["", f"Rollout (2 replicas, {ro['rollouts']} rollouts back to back, each replica "
              f"drained in nginx while it loads, {ro['seconds_per_replica']} s per replica): "
              f"p99 {ro['p99_ms_steady']} ms steady -> {ro['p99_ms_during_rollouts']} ms "
              f"during rollouts; req/s {ro['rps_steady']} -> {ro['rps_during_rollouts']}; "
              f"wrong {ro['wrong']}, failed {ro['failed']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        repo = root / "repo"
        v1 = _export(root, repo, 0)
        servers = [LocalTritonServer(repo, model_control_mode="explicit") for _ in range(3)]
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_until_ready()
            v2 = _export(root, repo, 1)
            refs = {str(v): canary_cases(d, 16, requests_from=v1) for v, d in ((1, v1), (2, v2))}
            result = {"cpus": os.cpu_count(), "threads": args.threads, "seconds": args.seconds,
                      "scaling": scaling(servers, refs, args.seconds, args.threads),
                      "rollout": rollout_p99(servers[:2], repo, refs, args.seconds,
                                             args.threads)}
        finally:
            for server in servers:
                server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "replicas.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
