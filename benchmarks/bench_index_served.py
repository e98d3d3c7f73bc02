"""The retrieve model's indexes served by the local tritonserver: latency, throughput, memory.

One trained-size stand-in (planted embeddings, ``--items`` x 64, 1,000 users, sqrt_dim)
is saved as a ``.keras`` model and exported three times with the python backend (what
``kmr-export serve`` runs): ``--index exact``, ``int8`` and ``ivf`` (export defaults:
nlist, nprobe for recall 0.95, rescore), and ``ivf`` again with 2 instances. Each model
is served alone (its own server, so memory is its own): ready time, server +
python-stub RSS, then closed-loop batch-1 load over gRPC (`benchmarks.loadgen`) at
concurrency 1 and 16 for ``--seconds`` each, with random known users and one exclusion.
Usage:
``python benchmarks/bench_index_served.py [--items 1000000] [--seconds 15] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import machine_info, markdown_table, write_results  # noqa: E402
from benchmarks.bench_ivf import make_tables  # noqa: E402
from benchmarks.bench_oversized import snapshot  # noqa: E402
from benchmarks.loadgen import run_load  # noqa: E402
from export.api import ExportOptions, export_model  # noqa: E402
from export.triton.local_server import LocalTritonServer, find_tritonserver  # noqa: E402
from kmr import contract  # noqa: E402
from kmr.models import build_recommender  # noqa: E402

# (label, index, instances): the last one measures what a second python-backend
# instance costs (each instance is its own stub process with its own session).
VARIANTS = (("exact", "exact", 1), ("int8", "int8", 1), ("ivf", "ivf", 1),
            ("ivf x2 instances", "ivf", 2))


def save_model(folder: Path, items: int) -> Path:
    users, table = make_tables("planted", items)
    users = users[:1000] if len(users) >= 1000 else np.resize(users, (1000, users.shape[1]))
    model = build_recommender(len(users), len(table), table.shape[1], k=10)
    model.get_layer("embedding").set_weights([users, table])
    path = folder / contract.MODEL_FILE
    model.save(path)
    return path


def requests(index: str, num_users: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    setting = contract.INDEX_SETTINGS.get(index)
    out = []
    for user in rng.integers(0, num_users, 256):
        feed = {contract.USER_ID: np.array([[user]]),
                contract.EXCLUDE_ITEM_IDS: np.array([[int(rng.integers(0, 1000))]])}
        if setting:
            feed[setting] = np.array([[0]])
        out.append(feed)
    return out


def serve_one(repo: Path, name: str, index: str, seconds: float) -> dict:
    start = time.perf_counter()
    with LocalTritonServer(repo, installation=find_tritonserver(),
                           startup_timeout=600) as server:
        ready = time.perf_counter() - start
        memory = snapshot(server)
        runs = [run_load(server.grpc_url, name, requests(index, 1000), concurrency=c,
                         max_requests=10**7, max_seconds=seconds, warmup=100)
                for c in (1, 16)]
    return {"ready_s": round(ready, 1), "memory": memory, "load": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true", help="20k items, 2 s per load step")
    args = parser.parse_args()
    if args.quick:
        args.items, args.seconds = 20_000, 2.0
    results = {"machine": machine_info(), "items": args.items, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = save_model(Path(tmp), args.items)
        for number, (label, index, instances) in enumerate(VARIANTS):
            repo = Path(tmp) / f"repo_{number}"
            started = time.perf_counter()
            result = export_model(model_path, repo, ExportOptions(
                name=f"mf_{index}", graph="retrieve", backend="python", index=index,
                instances=instances))
            entry = {"export_s": round(time.perf_counter() - started, 1),
                     "facts": result.models[0].index, "instances": instances}
            entry.update(serve_one(repo, f"mf_{index}", index, args.seconds))
            results["models"][label] = entry
            print(label, entry, flush=True)
            write(results)


def write(results: dict) -> None:
    rows = []
    for label, e in results["models"].items():
        one, sixteen = e["load"]
        rows.append([label, e["facts"].get("nprobe", e["facts"].get("rescore", "-")),
                     e["facts"].get("sample_recall", e["facts"].get("sample_agreement", 1)),
                     e["export_s"], e["ready_s"], e["memory"]["server"].get("VmRSS"),
                     e["memory"]["stub"].get("VmRSS"), one["p50_ms"], one["p99_ms"],
                     one["throughput_rps"], sixteen["p50_ms"], sixteen["p99_ms"],
                     sixteen["throughput_rps"], one["errors"] + sixteen["errors"]])
    md = (f"# Served retrieve indexes, {results['items']:,} items x 64 (local tritonserver, "
          "python backend, batch-1 gRPC, closed loop)\n\n"
          "`setting`: nprobe (ivf) / rescore (int8); `sample`: recall@10 (ivf) or share of "
          "sampled users answered exactly (int8) at the export's default. RSS in MB after "
          f"load. Load average at start {results['machine']['loadavg']}.\n\n"
          + markdown_table(["index", "setting", "sample", "export s", "ready s",
                            "server RSS", "stub RSS", "c=1 p50 ms", "c=1 p99 ms", "c=1 req/s",
                            "c=16 p50 ms", "c=16 p99 ms", "c=16 req/s", "errors"], rows))
    write_results("index_served" if results["items"] != 20_000 else "index_served_quick",
                  results, md)


if __name__ == "__main__":
    main()
