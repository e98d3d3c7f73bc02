"""Load test of the served stack: concurrent mixed rerank/retrieve over gRPC, checked answers.

Exports a tiny random-weight recommender (both graphs, python backend) into a temporary
repository, starts the local tritonserver (127.0.0.1, mode none) and runs ``--concurrency``
workers for ``--seconds`` with `client.aio.AsyncRecommenderClient`. Every answer of a
``--check-fraction`` sample is compared with onnxruntime on the exported model.onnx.
Reports throughput, p50/p99 latency, errors and wrong answers; writes
``benchmarks/results/load_test.json`` and ``load_test.md``; exits 1 on any error or wrong
answer.

`run_load` is also the load generator of tests/e2e/test_reliability_faults.py (server
restart, hot model update, killed export): it keeps its own counters of failed calls and
the clients' retry statistics, so nothing a fault causes is swallowed.

Usage:
    .venv/bin/python benchmarks/load_test.py [--seconds 60] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tests.support.served_stack` importable
    sys.path.insert(0, str(ROOT))

from tests.support.load import (  # noqa: E402
    MAX_CANDIDATES_PER_REQUEST,
    MAX_EXCLUDE_PER_REQUEST,
    MAX_USERS_PER_REQUEST,
    LoadResult,
    run_load,
)

RESULTS = ROOT / "benchmarks" / "results"

def write_report(result: LoadResult, out_dir: Path, extra: Mapping[str, Any]) -> tuple[Path, Path]:
    """Writes ``load_test.json`` and ``load_test.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**extra, **result.summary()}
    json_path = out_dir / "load_test.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lat = summary["latency_ms"]
    lines = [
        "# Load test: served stack over gRPC",
        "",
        f"{summary['seconds']} s at concurrency {summary['concurrency']}, mixed rerank "
        f"(1-{MAX_USERS_PER_REQUEST} users x 1-{MAX_CANDIDATES_PER_REQUEST} candidates) and "
        f"retrieve (1-{MAX_USERS_PER_REQUEST} users, 0-{MAX_EXCLUDE_PER_REQUEST} exclusions), "
        f"local tritonserver (python backend, onnxruntime), {extra.get('machine', '')}.",
        "",
        "| requests | ok | errors | checked vs onnxruntime | wrong | throughput (req/s) "
        "| p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {summary['requests']} | {summary['ok']} | {summary['errors']} | "
        f"{summary['checked']} | {summary['wrong']} | {summary['throughput_rps']} | "
        f"{lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} |",
        "",
        f"Client retries: {summary['client_stats']}",
        "",
        f"Rerun: `{extra.get('command', '.venv/bin/python benchmarks/load_test.py')}`",
        "",
    ]
    md_path = out_dir / "load_test.md"
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="run length (default 60)")
    parser.add_argument("--concurrency", type=int, default=32, help="workers (default 32)")
    parser.add_argument("--check-fraction", type=float, default=0.1,
                        help="share of answers compared with onnxruntime (default 0.1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 1 <= args.concurrency <= 1024:
        parser.error("expected 0 < --seconds <= 3600 and 1 <= --concurrency <= 1024")

    from tests.support.served_stack import start_served_stack

    with tempfile.TemporaryDirectory(prefix="kmr-load-") as folder, \
            start_served_stack(folder) as stack:
        result = run_load(
            stack.grpc_url, stack.names, {"v1": stack.sessions}, seconds=args.seconds,
            concurrency=args.concurrency, num_users=stack.num_users,
            num_items=stack.num_items, check_fraction=args.check_fraction)
    extra = {
        "benchmark": "load_test",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, shared",
        "model": {"num_users": stack.num_users, "num_items": stack.num_items,
                  "k": stack.k, "max_batch_size": stack.max_batch_size},
        "command": "python benchmarks/load_test.py " + " ".join(argv or sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    paths = write_report(result, args.out, extra)
    print(json.dumps(result.summary(), indent=2))
    print("wrote", *paths)
    return 0 if result.error_count == 0 and result.wrong == 0 and result.ok > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
