"""Export time and peak RSS of ``kmr-export export`` at growing catalogue sizes.

For each size a random-weight recommender (D=64) is built and saved in a subprocess,
then the export CLI runs under ``/usr/bin/time -v`` (peak RSS of the export process
itself). Results go to ``benchmarks/results/export_scale.json`` and ``.md``. The goal
is a peak RSS <= 2.5x the weights' bytes.

Usage:
    .venv/bin/python benchmarks/bench_export_scale.py [--sizes 100000:100000 ...]
        [--graph retrieve] [--workdir /tmp/kmr-export-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIM = 64
DEFAULT_SIZES = ("100000:100000", "1000000:1000000", "1000000:10000000")  # users:items

_MAKE_MODEL = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from kmr import contract
from kmr.models import build_recommender
from kmr.vocabulary import Vocabulary
users, items, dim, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = build_recommender(users, items, dim, k=10)
model.save(os.path.join(out, contract.MODEL_FILE))
Vocabulary(list(range(users))).save(os.path.join(out, contract.USER_VOCAB_FILE))
Vocabulary(list(range(items))).save(os.path.join(out, contract.ITEM_VOCAB_FILE))
"""


def _time_v(cmd: list[str]) -> tuple[float, int, str]:
    """Runs ``cmd`` under /usr/bin/time -v: (wall seconds, peak RSS bytes, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    return wall, rss_kb * 1024, proc.stdout


def run_size(users: int, items: int, graph: str, workdir: Path) -> dict:
    """Builds, saves and exports one model; returns its measurements."""
    artifacts, repo = workdir / f"art_{users}_{items}", workdir / f"repo_{users}_{items}"
    shutil.rmtree(artifacts, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    artifacts.mkdir(parents=True)
    py = sys.executable
    make_s, _, _ = _time_v([py, "-c", _MAKE_MODEL, str(users), str(items), str(DIM),
                            str(artifacts)])
    cmd = [py, "-m", "export", "export", "--model", str(artifacts / "model.keras"),
           "--repo", str(repo), "--graph", graph, "--k", "10"]
    export_s, rss, out = _time_v(cmd)
    stage_times: dict[str, float] = {}
    for stage, seconds in re.findall(r"\[\s*([a-z ]+)\]\s+([\d.]+) s", out):
        stage_times[stage] = stage_times.get(stage, 0.0) + float(seconds)
    weights = 4 * DIM * (users + items)

    # Load the published model back (fresh process) to prove it serves.
    model_dir = next(p for p in sorted(repo.iterdir()) if p.is_dir())
    onnx_path = model_dir / "1" / "model.onnx"
    load_s, load_rss, _ = _time_v([py, "-c", (
        "import onnxruntime as ort, sys; "
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"),
        str(onnx_path)])
    parity = [line.strip() for line in out.splitlines() if "parity:" in line]
    result = {
        "users": users, "items": items, "dim": DIM, "graph": graph,
        "weights_bytes": weights, "make_model_seconds": round(make_s, 1),
        "export_seconds": round(export_s, 1), "stage_seconds": stage_times,
        "peak_rss_bytes": rss, "peak_rss_over_weights": round(rss / weights, 2),
        "onnx_load_seconds": round(load_s, 1), "onnx_load_peak_rss_bytes": load_rss,
        "parity": parity,
    }
    shutil.rmtree(artifacts, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    return result


def write_results(results: list[dict]) -> None:
    """Writes the JSON and a Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export_scale.json").write_text(json.dumps(results, indent=2))
    gb = 1 << 30
    lines = [
        "# Export scale (D=64, 2 cores, 24 GB)", "",
        "| users | items | graph | weights GB | export s | peak RSS GB | RSS / weights "
        "| ORT load s | ORT load RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['users']:,} | {r['items']:,} | {r['graph']} | {r['weights_bytes'] / gb:.2f} "
            f"| {r['export_seconds']} | {r['peak_rss_bytes'] / gb:.2f} "
            f"| {r['peak_rss_over_weights']} | {r['onnx_load_seconds']} "
            f"| {r['onnx_load_peak_rss_bytes'] / gb:.2f} |"
        )
    lines += ["", "Stage seconds and parity lines: see export_scale.json.", ""]
    (RESULTS / "export_scale.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="users:items")
    parser.add_argument("--graph", default="both")
    parser.add_argument("--workdir", default="/tmp/kmr-export-scale")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = []
    for size in args.sizes:
        users, items = (int(x) for x in size.split(":"))
        print(f"exporting {users} users x {items} items ...", flush=True)
        results.append(run_size(users, items, args.graph, Path(args.workdir)))
        print(json.dumps(results[-1]), flush=True)
        write_results(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
