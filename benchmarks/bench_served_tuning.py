"""Served config tuning at concurrency 16: dynamic-batching delay and instance count, A/B.

All variants are models of ONE local Triton server and are measured round-robin
(interleaved, several rounds), so machine noise hits them alike; medians over rounds are
reported. Variants: ``max_queue_delay_us`` 100 (the `build_model_config` default), 500,
1000, and 500 with ``instance_count=2``. Load: `benchmarks/loadgen.py` and perf_analyzer.

Usage:
    .venv/bin/python benchmarks/bench_served_tuning.py            # full: 3 rounds, 100k items
    .venv/bin/python benchmarks/bench_served_tuning.py --quick    # 1 round, small models
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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
    random_weights,
    write_results,
)
from bench_served import (  # noqa: E402
    DIM,
    NUM_USERS,
    K,
    _perf_analyzer,
    _requests,
    _server_counts,
    _server_delta,
    run_perf_analyzer,
)
from loadgen import run_load  # noqa: E402

NAME = "served_tuning"
CONCURRENCY = 16
VARIANTS: dict[str, dict[str, int]] = {
    "delay100 (default)": {"max_queue_delay_us": 100},
    "delay500": {"max_queue_delay_us": 500},
    "delay1000": {"max_queue_delay_us": 1000},
    "delay500 + 2 instances": {"max_queue_delay_us": 500, "instance_count": 2},
}


def _model_name(kind: str, index: int) -> str:
    return f"{kind}_v{index}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, small models")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    from export.api import PYTHON_BACKEND_FILE
    from export.triton.config import build_model_config, write_model_config
    from export.triton.local_server import LocalTritonServer

    rounds = args.rounds or (1 if args.quick else 3)
    num_items = 5_000 if args.quick else 100_000
    max_requests, max_seconds = (300, 3.0) if args.quick else (3000, 8.0)
    start = machine_info()
    pa = _perf_analyzer()
    rng = np.random.default_rng(7)
    measurements: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kmr-bench-tuning-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        requests = {}
        for kind in ("rerank", "retrieve"):
            weights = random_weights(NUM_USERS, num_items, DIM, seed=5)
            onnx_path = export_onnx(weights, kind, K, Path(tmp) / f"onnx_{kind}")
            requests[kind] = _requests(kind, num_items, rng)
            for index, extra in enumerate(VARIANTS.values()):
                name = _model_name(kind, index)
                config = build_model_config(name=name, graph_kind=kind, backend="python",
                                            num_users=NUM_USERS, num_items=num_items,
                                            embedding_dim=DIM, k=K, **extra)
                (repo / name / "1").mkdir(parents=True)
                write_model_config(repo / name, config)
                shutil.copy(PYTHON_BACKEND_FILE, repo / name / "1" / "model.py")
                for file in onnx_path.parent.iterdir():
                    shutil.copy(file, repo / name / "1" / file.name)
        with LocalTritonServer(repo, startup_timeout=180) as server:
            for round_index in range(rounds):
                for kind in ("rerank", "retrieve"):
                    for index, variant in enumerate(VARIANTS):
                        model = _model_name(kind, index)
                        before = _server_counts(server.grpc_url, model)
                        result = run_load(server.grpc_url, model, requests[kind],
                                          concurrency=CONCURRENCY, max_requests=max_requests,
                                          max_seconds=max_seconds)
                        result.update(_server_delta(before,
                                                    _server_counts(server.grpc_url, model)))
                        if pa:
                            result["perf_analyzer"] = run_perf_analyzer(
                                pa, server.grpc_url, model, kind, requests[kind], CONCURRENCY,
                                Path(tmp), True)
                        measurements.append({"round": round_index, "graph": kind,
                                             "variant": variant, **result})
                        print(round_index, kind, variant, result["throughput_rps"], flush=True)
    end_load = loadavg()
    rows = []
    summary = []
    for kind in ("rerank", "retrieve"):
        for variant in VARIANTS:
            runs = [m for m in measurements if m["graph"] == kind and m["variant"] == variant]
            rps = [m["throughput_rps"] for m in runs]
            pa_rps = [m["perf_analyzer"]["throughput_rps"] for m in runs
                      if "throughput_rps" in m.get("perf_analyzer", {})]
            entry = {"graph": kind, "variant": variant,
                     "loadgen_rps_median": float(np.median(rps)),
                     "loadgen_rps_runs": rps,
                     "p99_ms_median": float(np.median([m["p99_ms"] for m in runs])),
                     "avg_server_batch": float(np.median([m["avg_server_batch"]
                                                          for m in runs])),
                     "perf_analyzer_rps_median": float(np.median(pa_rps)) if pa_rps else None}
            summary.append(entry)
            rows.append([kind, variant, entry["loadgen_rps_median"],
                         ", ".join(f"{x:.0f}" for x in rps), entry["p99_ms_median"],
                         entry["avg_server_batch"],
                         entry["perf_analyzer_rps_median"] or "n/a"])
    payload = {"benchmark": NAME, "quick": args.quick, "machine": start,
               "loadavg_end": end_load, "concurrency": CONCURRENCY, "num_items": num_items,
               "variants": VARIANTS, "summary": summary, "measurements": measurements}
    md = "\n".join([
        f"# Served config tuning at concurrency {CONCURRENCY} (interleaved A/B, one server)",
        "", machine_line(start, end_load), "",
        f"Batch-1 requests, {num_items:,} items, {rounds} interleaved rounds; medians.", "",
        markdown_table(["graph", "variant", "loadgen req/s (median)", "per round",
                        "p99 ms", "avg server batch", "perf_analyzer req/s"], rows)])
    write_results(NAME, payload, md, args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
