"""Served throughput and latency through the real local Triton (gRPC) vs in-process onnxruntime.

One local server (`export.triton.local_server.LocalTritonServer`, python backend running the
exported ``model.onnx`` with onnxruntime) serves four models built with the project's
export code and `export.triton.config.build_model_config`: rerank (N=100 candidates) and
retrieve (100k items), each with dynamic batching on (the config default) and off (the
``dynamic_batching`` block removed). Every request has batch 1. Load comes from
perf_analyzer (where it runs; ``scripts/setup_triton.sh --with-perf-analyzer``) and from
the project's own asyncio load generator (`benchmarks/loadgen.py`), at concurrency 1, 4,
16 and 64. The same requests are also run in process with onnxruntime, sequentially and
from as many threads as the concurrency.

Goal: served throughput >= 60% of in-process onnxruntime at concurrency 16.

Usage:
    .venv/bin/python benchmarks/bench_served.py            # full
    .venv/bin/python benchmarks/bench_served.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    export_onnx,
    loadavg,
    machine_info,
    machine_line,
    markdown_table,
    ort_session,
    random_weights,
    write_results,
)
from loadgen import run_load  # noqa: E402

NAME = "served"
K = 10
DIM = 64
NUM_USERS = 10_000
RERANK_ITEMS = 100_000
RETRIEVE_ITEMS = 100_000
CANDIDATES = 100
REQUEST_POOL = 256


def _requests(kind: str, num_items: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Batch-1 request feeds; retrieve sends one padding exclusion (-1)."""
    out = []
    for _ in range(REQUEST_POOL):
        user = rng.integers(0, NUM_USERS, (1, 1))
        if kind == "rerank":
            out.append({"user_id": user,
                        "item_ids": rng.integers(0, num_items, (1, CANDIDATES))})
        else:
            out.append({"user_id": user, "exclude_item_ids": np.full((1, 1), -1, np.int64)})
    return out


def build_repository(repo: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Exports both graphs and writes the batched / unbatched models. Returns model facts."""
    from export.api import PYTHON_BACKEND_FILE
    from export.triton.config import build_model_config, write_model_config

    models: dict[str, dict[str, Any]] = {}
    for kind, num_items in (("rerank", args.rerank_items), ("retrieve", args.retrieve_items)):
        weights = random_weights(NUM_USERS, num_items, DIM, seed=5)
        onnx_path = export_onnx(weights, kind, K, repo.parent / f"onnx_{kind}")
        for batching in (True,) if args.batched_only else (True, False):
            name = f"{kind}_{'batched' if batching else 'unbatched'}"
            extra: dict[str, Any] = {}
            if args.instances is not None:
                extra["instance_count"] = args.instances
            if args.threads is not None:
                extra["intra_op_threads"] = args.threads
            if args.queue_delay_us is not None:
                extra["max_queue_delay_us"] = args.queue_delay_us
            config = build_model_config(
                name=name, graph_kind=kind, backend="python", num_users=NUM_USERS,
                num_items=num_items, embedding_dim=DIM, k=K, **extra)
            if not batching:
                config.ClearField("dynamic_batching")
            version = repo / name / "1"
            version.mkdir(parents=True)
            write_model_config(repo / name, config)
            shutil.copy(PYTHON_BACKEND_FILE, version / "model.py")
            for file in onnx_path.parent.iterdir():
                shutil.copy(file, version / file.name)
            models[name] = {"kind": kind, "num_items": num_items, "batching": batching,
                            "onnx": onnx_path,
                            "instance_count": config.instance_group[0].count,
                            "intra_op_threads": config.parameters[
                                "intra_op_num_threads"].string_value,
                            "max_queue_delay_us": (config.dynamic_batching
                                                   .max_queue_delay_microseconds
                                                   if batching else None)}
    return models


def _perf_analyzer() -> Path | None:
    from export.triton.local_server import find_tritonserver

    try:
        home = find_tritonserver().home
    except Exception:  # noqa: BLE001 - not installed: perf_analyzer is skipped
        return None
    path = Path(home) / "perf_analyzer" / "perf_analyzer"
    return path if path.exists() else None


def run_perf_analyzer(binary: Path, url: str, model: str, kind: str,
                      requests: list[dict[str, np.ndarray]], concurrency: int,
                      folder: Path, quick: bool) -> dict[str, Any]:
    """One perf_analyzer measurement (gRPC, batch 1) at ``concurrency``; parsed CSV row."""
    data = {"data": [{name: {"content": a.reshape(-1).tolist(), "shape": list(a.shape[1:])}
                      for name, a in feed.items()} for feed in requests[:64]]}
    for entry in data["data"]:
        entry["user_id"] = {"content": entry["user_id"]["content"], "shape": [1]}
    data_path = folder / f"{kind}_data.json"
    data_path.write_text(json.dumps(data))
    csv_path = folder / f"{model}_c{concurrency}.csv"
    cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", "1",
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", str(data_path), "-p", "1000" if quick else "3000",
           "-s", "30", "-r", "3" if quick else "6", "-f", str(csv_path)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    seconds = round(time.perf_counter() - start, 1)
    if (done.returncode != 0 or not csv_path.exists()) and not quick:
        # Unstable on a busy machine: one retry with a looser stability threshold.
        cmd[cmd.index("-s") + 1] = "60"
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0 or not csv_path.exists():
        return {"error": (done.stdout + done.stderr)[-600:], "seconds": seconds}
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    unstable = "Failed to obtain stable measurement" in done.stdout + done.stderr
    return {"throughput_rps": float(row["Inferences/Second"]),
            "p50_ms": int(row["p50 latency"]) / 1000, "p99_ms": int(row["p99 latency"]) / 1000,
            "server_queue_ms": int(row["Server Queue"]) / 1000,
            "server_compute_ms": int(row["Server Compute Infer"]) / 1000,
            "stable": not unstable, "stability_pct": int(cmd[cmd.index("-s") + 1]),
            "seconds": seconds}


def inprocess(session: Any, requests: list[dict[str, np.ndarray]], concurrency: int,
              max_requests: int, max_seconds: float) -> dict[str, Any]:
    """The same batch-1 requests through an in-process session from ``concurrency`` threads."""
    feeds = [{n: a if n != "user_id" else a.reshape(-1) for n, a in f.items()}
             for f in requests]
    for feed in feeds[:20]:
        session.run(None, feed)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        local = []
        for index in counter:
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            session.run(None, feeds[index % len(feeds)])
            local.append(time.perf_counter() - start)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = 1000 * np.asarray(latencies)
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def _server_counts(url: str, model: str) -> dict[str, int]:
    """Cumulative server statistics of ``model``: requests, executions, queue/compute ns."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics(model).model_stats[0]
    client.close()
    infer = stats.inference_stats
    return {"requests": int(infer.success.count), "executions": int(stats.execution_count),
            "queue_ns": int(infer.queue.ns), "compute_infer_ns": int(infer.compute_infer.ns),
            "compute_input_ns": int(infer.compute_input.ns),
            "compute_output_ns": int(infer.compute_output.ns)}


def _server_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Average batch per execution, queue time per request and execute() time."""
    requests = max(1, after["requests"] - before["requests"])
    executions = max(1, after["executions"] - before["executions"])
    # compute_* are per request (each request of an execution gets the execution's time).
    return {
        "avg_server_batch": round(requests / executions, 2),
        "server_queue_us_per_request": round(
            (after["queue_ns"] - before["queue_ns"]) / requests / 1000, 1),
        "server_execute_us": round(
            (after["compute_infer_ns"] - before["compute_infer_ns"]) / requests / 1000, 1),
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("rerank", "retrieve"), strict=True):
        conc = results["concurrency"]
        for model, series in results["served"].items():
            if not model.startswith(kind):
                continue
            for tool in ("loadgen", "perf_analyzer"):
                ys = [series[str(c)].get(tool, {}).get("throughput_rps") for c in conc]
                if any(y is not None for y in ys):
                    style = "-o" if tool == "loadgen" else "--s"
                    ax.plot(conc, [np.nan if y is None else y for y in ys], style,
                            label=f"{model.split('_')[1]} / {tool}")
        ys = [results["inprocess"][kind][str(c)]["throughput_rps"] for c in conc]
        ax.plot(conc, ys, "-^", color="k", label="in-process onnxruntime (threads)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (batch-1 requests in flight)")
        ax.set_ylabel("requests / s")
        ax.set_title(f"{kind}")
        ax.legend(fontsize=7)
    fig.suptitle("Local Triton (python backend + onnxruntime, gRPC) vs in-process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--instances", type=int, default=None,
                        help="instance_count (default: build_model_config's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="python backend intra_op_num_threads (default: the config's)")
    parser.add_argument("--queue-delay-us", type=int, default=None)
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--batched-only", action="store_true",
                        help="skip the models without dynamic batching")
    parser.add_argument("--name", default=NAME, help="results file name")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.rerank_items = 5_000 if args.quick else RERANK_ITEMS
    args.retrieve_items = 5_000 if args.quick else RETRIEVE_ITEMS
    concurrency = args.concurrency or ([1, 16] if args.quick else [1, 4, 16, 64])
    max_requests = 300 if args.quick else 4000
    max_seconds = 3.0 if args.quick else 12.0
    start = machine_info()
    from export.triton.local_server import LocalTritonServer

    pa = None if args.no_perf_analyzer else _perf_analyzer()
    rng = np.random.default_rng(6)
    results: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "machine": start,
                               "concurrency": concurrency, "served": {}, "inprocess": {},
                               "perf_analyzer": str(pa) if pa else None}
    with tempfile.TemporaryDirectory(prefix="kmr-bench-served-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        models = build_repository(repo, args)
        results["models"] = {m: {k: v for k, v in f.items() if k != "onnx"}
                             for m, f in models.items()}
        requests = {kind: _requests(kind, n, rng)
                    for kind, n in (("rerank", args.rerank_items),
                                    ("retrieve", args.retrieve_items))}
        for kind in ("rerank", "retrieve"):
            onnx_path = models[f"{kind}_batched"]["onnx"]
            session = ort_session(onnx_path)
            results["inprocess"][kind] = {
                str(c): inprocess(session, requests[kind], c, max_requests, max_seconds)
                for c in concurrency}
            print(kind, "in-process", json.dumps(results["inprocess"][kind]), flush=True)
            del session
        with LocalTritonServer(repo, startup_timeout=180) as server:
            for model, facts in models.items():
                kind = facts["kind"]
                series: dict[str, Any] = {}
                for c in concurrency:
                    entry: dict[str, Any] = {}
                    before = _server_counts(server.grpc_url, model)
                    entry["loadgen"] = run_load(server.grpc_url, model, requests[kind],
                                                concurrency=c, max_requests=max_requests,
                                                max_seconds=max_seconds)
                    after = _server_counts(server.grpc_url, model)
                    entry["loadgen"].update(_server_delta(before, after))
                    if pa:
                        entry["perf_analyzer"] = run_perf_analyzer(
                            pa, server.grpc_url, model, kind, requests[kind], c, Path(tmp),
                            args.quick)
                    series[str(c)] = entry
                    print(model, c, json.dumps(entry), flush=True)
                results["served"][model] = series
    end_load = loadavg()
    results["loadavg_end"] = end_load
    goal_c = 16 if 16 in concurrency else max(concurrency)
    goals = []
    rows = []
    for model, series in results["served"].items():
        kind = models[model]["kind"]
        for c in concurrency:
            ref = results["inprocess"][kind][str(c)]["throughput_rps"]
            lg = series[str(c)]["loadgen"]
            pa_row = series[str(c)].get("perf_analyzer", {})
            rows.append([model, c, lg["throughput_rps"], lg["p50_ms"], lg["p99_ms"],
                         lg["avg_server_batch"], pa_row.get("throughput_rps", "n/a"),
                         pa_row.get("p50_ms", "n/a"), pa_row.get("p99_ms", "n/a"), ref,
                         f"{100 * lg['throughput_rps'] / ref:.0f}%"])
        ref = results["inprocess"][kind][str(goal_c)]["throughput_rps"]
        for tool in ("loadgen", "perf_analyzer"):
            value = series[str(goal_c)].get(tool, {}).get("throughput_rps")
            if value is not None:
                goals.append({"model": model, "tool": tool, "concurrency": goal_c,
                              "served_rps": value, "inprocess_rps": ref,
                              "ratio": round(value / ref, 3), "met": value >= 0.6 * ref})
    results["goals"] = goals
    inproc_rows = [[kind, c, r["throughput_rps"], r["p50_ms"], r["p99_ms"]]
                   for kind, per in results["inprocess"].items() for c, r in per.items()]
    facts = next(iter(results["models"].values()))
    md = "\n".join([
        "# Served (local Triton, python backend + onnxruntime, gRPC) vs in-process", "",
        machine_line(start, end_load), "",
        f"Batch-1 requests; rerank N={CANDIDATES} candidates over {args.rerank_items:,} "
        f"items, retrieve over {args.retrieve_items:,} items (D={DIM}, k={K}). Config: "
        f"instance_count={facts['instance_count']}, intra_op_num_threads="
        f"{facts['intra_op_threads']}, max_queue_delay_us="
        f"{results['models']['rerank_batched']['max_queue_delay_us']} (batched models); "
        "the unbatched models have no dynamic_batching block.", "",
        markdown_table(["model", "conc.", "loadgen req/s", "p50 ms", "p99 ms",
                        "avg server batch", "perf_analyzer req/s", "PA p50 ms", "PA p99 ms",
                        "in-process ORT req/s", "loadgen / in-process"], rows),
        "", "In-process onnxruntime (same requests, threads = concurrency):", "",
        markdown_table(["graph", "threads", "req/s", "p50 ms", "p99 ms"], inproc_rows),
        "", f"Goal: served >= 60% of in-process onnxruntime at concurrency {goal_c}:", "",
        markdown_table(["model", "tool", "served req/s", "in-process req/s", "ratio", "met"],
                       [[g["model"], g["tool"], g["served_rps"], g["inprocess_rps"],
                         g["ratio"], g["met"]] for g in goals]),
    ])
    write_results(args.name, results, md, args.results_dir)
    _plot(results, args.results_dir / f"{args.name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
