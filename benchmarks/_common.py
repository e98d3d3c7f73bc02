"""Shared helpers of the benchmark scripts: timing, machine description, model export, output.

Every benchmark writes ``benchmarks/results/<name>.json`` (numbers + machine) and
``<name>.md`` (a markdown table). Times are medians over repetitions after warm-up.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (how busy the shared machine is)."""
    return [round(x, 2) for x in os.getloadavg()]


def blas_info() -> list[dict[str, Any]]:
    """Which BLAS kernels this process loaded (threadpoolctl), e.g. OpenBLAS ``SkylakeX``."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    keys = ("internal_api", "architecture", "num_threads", "version", "prefix")
    return [{k: info.get(k) for k in keys} for info in threadpoolctl.threadpool_info()]


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, library versions, OPENBLAS env and the load average now."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg": loadavg(),
        "openblas_env": {v: os.environ.get(v) for v in OPENBLAS_VARS},
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        wanted = ("Model name", "Core(s) per socket", "Thread(s) per core", "L2 cache",
                  "L3 cache", "Hypervisor vendor")
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in wanted:
                info[key.strip()] = value.strip()
        info["avx512f"] = " avx512f " in f" {lscpu} "
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for module in ("numpy", "onnxruntime", "tensorflow", "keras", "faiss", "tritonclient"):
        try:
            mod = __import__(module)
            versions[module] = getattr(mod, "__version__", "?")
        except ImportError:
            continue
    info["versions"] = versions
    return info


def median_ms(fn: Callable[[], Any], *, repeats: int, warmup: int = 2,
              max_seconds: float | None = None) -> dict[str, float]:
    """Runs ``fn`` ``warmup`` times, then up to ``repeats`` times; returns ms statistics.

    ``max_seconds`` stops the timed loop early (after at least 3 runs) so slow cases stay
    bounded. Returns ``median_ms``, ``p10_ms``, ``p90_ms`` and ``runs``.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if max_seconds and len(times) >= 3 and time.perf_counter() - start_all > max_seconds:
            break
    return _stats(times)


def interleaved_ms(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 2,
                   max_seconds: float | None = None) -> dict[str, dict[str, float]]:
    """`median_ms` of several functions timed in turn (a, b, a, b, ...), so machine noise
    hits them alike; returns name -> the same statistics."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if max_seconds and len(times[name]) >= 3 and time.perf_counter() - start_all > max_seconds:
            break
    return {name: _stats(values) for name, values in times.items()}


def _stats(times: list[float]) -> dict[str, float]:
    arr = 1000 * np.asarray(times)
    return {
        "median_ms": round(float(np.median(arr)), 4),
        "p10_ms": round(float(np.percentile(arr, 10)), 4),
        "p90_ms": round(float(np.percentile(arr, 90)), 4),
        "runs": len(times),
    }


def random_weights(num_users: int, num_items: int, dim: int, *, seed: int = 0,
                   normalization: str = "sqrt_dim") -> Any:
    """`RecommenderWeights` with random normal tables (float32)."""
    from export.onnx.graphs import RecommenderWeights
    from kmr.layers import NormalizedDotProductSimilarity

    rng = np.random.default_rng(seed)
    users = rng.standard_normal((num_users, dim), dtype=np.float32)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    return RecommenderWeights(users, items, NormalizedDotProductSimilarity(normalization))


def export_onnx(weights: Any, kind: str, k: int, out_dir: Path) -> Path:
    """Builds the ``kind`` serving graph and converts it with the project's export code."""
    from export.onnx.convert import convert_graph
    from export.onnx.graphs import serving_graph

    out_dir.mkdir(parents=True, exist_ok=True)
    return convert_graph(serving_graph(weights, kind, k), out_dir).path


def ort_session(path: Path, *, threads: int = 0, profile_prefix: str | None = None) -> Any:
    """An onnxruntime CPU session (``threads=0``: onnxruntime's default, all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str,
                  results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Writes ``<name>.json`` and ``<name>.md`` under ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, md_path


def machine_line(start: dict[str, Any], end_load: Sequence[float]) -> str:
    """One markdown line saying the machine and how loaded it was at start and end."""
    return (f"Machine: {start.get('Model name', '?')}, {start.get('cpu_count')} cores, "
            f"{start.get('ram_gb', '?')} GB RAM; loadavg at start {start['loadavg']}, "
            f"at end {list(end_load)}; {start['date_utc']} UTC.")
