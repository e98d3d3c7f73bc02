"""Oversized requests vs server/stub memory and good traffic (issue 13), config A/B.

One tiny rerank model (python backend) is exported once with the project's API; every
variant serves a copy of that repository on its own local Triton 2.51 (one at a time).
Per variant: RSS of tritonserver and of its ``triton_python_backend_stub`` children
(VmRSS, split into RssAnon / RssShmem, plus the python backend's /dev/shm regions) at
baseline, right after a burst of oversized requests and after an idle pause, and the
p50/p99 of good gRPC traffic (a few threads) before and during the burst.

The burst (same bytes for every variant): 2 x gRPC and 1 x HTTP binary requests of
12.8M int64 candidates (102 MB: 64 x 200,000, rows capped at the variant's
max_batch_size), 1 x HTTP/JSON body with the same element count, and 2 x the legal
64 x 10,000 rerank over gRPC; ``--bursts`` rounds of it (default 2: does memory plateau?).
"Idle" means no oversized requests for ``--idle-seconds``; good traffic goes on. The
``reload`` variants then call ``load_model`` (explicit mode), which starts a new stub.
Good traffic runs in a spawned child process so the burst's client-side serialization
does not hold its GIL (it still shares the machine's cores).

The ``gateway`` variant puts `export.gateway`'s nginx (what ``kmr-export serve --gateway``
runs) in front, sized from the repository's bounds; the burst and the good traffic both
go through it.

Usage:
    .venv/bin/python benchmarks/bench_oversized.py                 # every variant
    .venv/bin/python benchmarks/bench_oversized.py --variants default shm-64MB
    .venv/bin/python benchmarks/bench_oversized.py --variants default gateway \
        gateway-oversized-only --out oversized_gateway
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import RESULTS_DIR, machine_info, machine_line, markdown_table  # noqa: E402

NAME = "oversized"
MODEL = "ovr"
NUM_USERS, NUM_ITEMS, DIM, K = 24, 60, 8, 5
GOOD_BATCH, GOOD_N = 4, 50
BIG_ELEMENTS = 64 * 200_000
LEGAL_SHAPE = (64, 10_000)
GOOD_THREADS = 3
MB = 2**20
STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"
PY_CFG = "--backend-config=python,"


@dataclass
class Variant:
    """One server configuration: server flags, env, and edits of the exported repo."""

    name: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 64
    fixed_dims: int | None = None
    ort_arena_off: bool = False
    reload: bool = False
    gateway: bool = False
    legal_in_burst: bool = True
    note: str = ""


MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
              "MALLOC_TRIM_THRESHOLD_": "131072"}
VARIANTS = [
    Variant("default", note="project's flags as today"),
    Variant("shm-1MB", [f"{PY_CFG}shm-default-byte-size=1048576",
                        f"{PY_CFG}shm-growth-byte-size=1048576"], note="python backend default"),
    Variant("shm-64MB", [f"{PY_CFG}shm-default-byte-size=67108864",
                         f"{PY_CFG}shm-growth-byte-size=67108864"]),
    Variant("grpc-pool-1", ["--grpc-infer-allocation-pool-size=1"]),
    Variant("malloc-env", env=MALLOC_ENV, note="glibc: mmap threshold 128 KB, 2 arenas"),
    Variant("ort-arena-off", ort_arena_off=True, note="model.py: enable_cpu_mem_arena=False"),
    Variant("max-batch-8", max_batch_size=8, note="big requests become 8 x 1.6M"),
    Variant("fixed-dims-50", fixed_dims=GOOD_N, note="item_ids dims [50] (clients must pad)"),
    Variant("arena-off+reload", ort_arena_off=True, reload=True,
            note="explicit mode; load_model() after the idle pause (new stub)"),
    Variant("malloc-env+arena-off+reload", env=MALLOC_ENV, ort_arena_off=True, reload=True),
    Variant("malloc-env+arena-off+pool-1", ["--grpc-infer-allocation-pool-size=1"],
            env=MALLOC_ENV, ort_arena_off=True),
    Variant("gateway-oversized-only", gateway=True, legal_in_burst=False,
            note="the same without the legal 64 x 10,000 reranks in the burst"),
    Variant("gateway", gateway=True,
            note="kmr-export serve --gateway: nginx sized from the export's bounds in "
            "front; burst and good traffic go through it"),
]


# -- repository --------------------------------------------------------------------
def export_repo(root: Path) -> Path:
    """Exports the tiny rerank model (python backend, max_batch_size 64) into root/repo."""
    from export.api import ExportOptions, export_model
    from tests.support.export_helpers import save_artifacts, tiny_model

    model_path = save_artifacts(tiny_model(NUM_USERS, NUM_ITEMS, DIM, seed=0), root / "art")
    options = ExportOptions(name=MODEL, graph="rerank", k=K, backend="python",
                            max_batch_size=64)
    export_model(model_path, root / "repo", options)
    return root / "repo"


def variant_repo(base: Path, variant: Variant, root: Path) -> Path:
    """A copy of ``base`` with the variant's config / model.py edits."""
    from export.triton.config import read_model_config, write_model_config

    repo = root / f"repo-{variant.name}"
    shutil.copytree(base, repo)
    cfg_path = repo / MODEL / "config.pbtxt"
    config = read_model_config(cfg_path)
    config.max_batch_size = variant.max_batch_size
    if variant.fixed_dims is not None:
        config.input[1].dims[:] = [variant.fixed_dims]
        for warmup in config.model_warmup:
            warmup.inputs[config.input[1].name].dims[:] = [variant.fixed_dims]
    write_model_config(cfg_path, config)
    if variant.ort_arena_off:
        for model_py in repo.glob(f"{MODEL}/*/model.py"):
            text = model_py.read_text(encoding="utf-8")
            anchor = "options.inter_op_num_threads = 1"
            assert anchor in text, "model.py changed: arena patch anchor not found"
            model_py.write_text(text.replace(
                anchor, anchor + "\n        options.enable_cpu_mem_arena = False"))
            shutil.rmtree(model_py.parent / "__pycache__", ignore_errors=True)
    return repo


# -- memory ------------------------------------------------------------------------
def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS / RssAnon / RssShmem of ``pid`` in MB (empty if gone)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def stub_pids(server_pid: int) -> list[int]:
    """Children of the server named triton_python_backend_stub."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
            if fields.get("PPid", "").strip() == str(server_pid) and \
                    fields.get("Name", "").strip().startswith(STUB_NAME[:15]):
                pids.append(int(status.parent.name))
    return pids


def shm_mb(server: Any) -> dict[str, float]:
    """Size and resident tmpfs blocks (MB) of the server's python-backend regions."""
    size = blocks = 0
    for path in server.shared_memory_regions():
        with contextlib.suppress(OSError):
            st = path.stat()
            size += st.st_size
            blocks += st.st_blocks * 512
    return {"shm_size_mb": round(size / MB, 1), "shm_resident_mb": round(blocks / MB, 1)}


def snapshot(server: Any) -> dict[str, Any]:
    """Server and stub memory now (stubs summed)."""
    stubs = [proc_mem(pid) for pid in stub_pids(server.pid)]
    stub = {key: round(sum(s.get(key, 0.0) for s in stubs), 1)
            for key in ("VmRSS", "RssAnon", "RssShmem")}
    return {"server": proc_mem(server.pid), "stub": stub, "stubs": len(stubs),
            **shm_mb(server)}


# -- traffic -----------------------------------------------------------------------
def rerank_inputs(client_mod: Any, users: np.ndarray, ids: np.ndarray) -> list[Any]:
    """The two rerank inputs for tritonclient (grpc or http module)."""
    inputs = [client_mod.InferInput("user_id", [len(users), 1], "INT64"),
              client_mod.InferInput("item_ids", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(users.reshape(-1, 1).astype(np.int64))
    inputs[1].set_data_from_numpy(ids)
    return inputs


PHASES = ("warmup", "before", "during", "after")


def _good_loop(url: str, seed: int, phase: Any, stop: Any, out: Any) -> None:
    """One good-traffic thread: small valid reranks until ``stop``; (phase, s, ok) rows."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        users = rng.integers(0, NUM_USERS, GOOD_BATCH)
        ids = rng.integers(0, NUM_ITEMS, (GOOD_BATCH, GOOD_N))
        tag, start, ok = PHASES[phase.value], time.perf_counter(), True
        try:
            client.infer(MODEL, rerank_inputs(grpcclient, users, ids), client_timeout=30)
        except Exception:  # noqa: BLE001  (counted as a failed good request)
            ok = False
        out.append((tag, time.perf_counter() - start, ok))
    client.close()


def _good_process(url: str, phase: Any, stop: Any, queue: Any) -> None:
    """Child process (own GIL, away from the burst's serialization): GOOD_THREADS loops."""
    out: list[tuple[str, float, bool]] = []
    threads = [threading.Thread(target=_good_loop, args=(url, i, phase, stop, out))
               for i in range(GOOD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(out)


class GoodTraffic:
    """Good gRPC traffic in a spawned child process; latencies tagged by phase."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self._phase, self._stop, self._queue = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
        self._process = ctx.Process(target=_good_process,
                                    args=(url, self._phase, self._stop, self._queue))
        self.samples: list[tuple[str, float, bool]] = []

    def set_phase(self, name: str) -> None:
        self._phase.value = PHASES.index(name)

    def __enter__(self) -> GoodTraffic:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.samples = self._queue.get(timeout=90)
        self._process.join(timeout=30)

    def stats(self, phase: str, seconds: float) -> dict[str, float]:
        """p50/p99 ms, req/s and failures of one phase."""
        rows = [(t, ok) for p, t, ok in self.samples if p == phase]
        times = np.asarray([t for t, ok in rows if ok]) * 1000
        if not len(times):
            return {"requests": len(rows), "failed": len(rows)}
        return {"requests": len(rows), "failed": sum(not ok for _, ok in rows),
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p99_ms": round(float(np.percentile(times, 99)), 2),
                "rps": round(len(rows) / max(seconds, 1e-9), 1)}


def _outcome(kind: str, call: Callable[[], Any]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        call()
        result: dict[str, Any] = {"ok": True}
    except Exception as e:  # noqa: BLE001  (the error text is the measurement)
        result = {"ok": False, "error": str(e).replace("\n", " ")[:160]}
    return {"kind": kind, "seconds": round(time.perf_counter() - start, 2), **result}


def json_body(rows: int, n: int) -> bytes:
    """A KServe-v2 JSON body of rows x n candidates (ids '59'), built without json.dumps."""
    ids = b"[" + b"59," * (rows * n - 1) + b"59]"
    users = json.dumps([0] * rows).encode()
    return (b'{"inputs":[{"name":"user_id","shape":[%d,1],"datatype":"INT64","data":%s},'
            b'{"name":"item_ids","shape":[%d,%d],"datatype":"INT64","data":%s}]}'
            % (rows, users, rows, n, ids))


def post_json(http_url: str, body: bytes) -> None:
    """Raw HTTP POST of ``body``; raises on a non-200 answer."""
    host, port = http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()[:300].decode(errors="replace")
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {text}")
    finally:
        conn.close()


def burst_calls(server: Any, rows: int, legal_too: bool = True,
                ) -> list[tuple[str, Callable[[], Any]]]:
    """The oversized burst (see module docstring) as (label, call) pairs."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    n = BIG_ELEMENTS // rows
    big = np.full((rows, n), 7, dtype=np.int64)
    legal = np.full(LEGAL_SHAPE, 7, dtype=np.int64)
    users, legal_users = np.zeros(rows, np.int64), np.zeros(LEGAL_SHAPE[0], np.int64)
    body = json_body(rows, n)

    def grpc(u: np.ndarray, ids: np.ndarray) -> Callable[[], Any]:
        def call() -> Any:
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                return client.infer(MODEL, rerank_inputs(grpcclient, u, ids),
                                    client_timeout=120)
        return call

    def http_binary() -> Any:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=120) as c:
            return c.infer(MODEL, rerank_inputs(httpclient, users, big))

    label = f"{rows}x{n}"
    return [(f"grpc {label} ({big.nbytes / MB:.0f} MB)", grpc(users, big)),
            (f"grpc {label} ({big.nbytes / MB:.0f} MB)", grpc(users, big)),
            (f"http-binary {label}", http_binary),
            (f"http-json {label} ({len(body) / MB:.0f} MB body)", lambda: post_json(
                server.http_url, body)),
            *([("grpc legal 64x10000", grpc(legal_users, legal))] * (2 if legal_too else 0))]


# -- one variant -------------------------------------------------------------------
@contextlib.contextmanager
def served(repo: Path, variant: Variant) -> Iterator[Any]:
    """A running LocalTritonServer with the variant's flags and environment."""
    from export.triton.local_server import LocalTritonServer

    saved = {key: os.environ.get(key) for key in variant.env}
    os.environ.update(variant.env)
    try:
        mode = "explicit" if variant.reload else "none"
        server = LocalTritonServer(repo, extra_args=variant.args, startup_timeout=120,
                                   model_control_mode=mode)
        server.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        server.wait_until_ready()
        if not variant.gateway:
            yield server
        else:
            with _gateway(repo, server) as fronted:
                yield fronted
    finally:
        server.stop()


class _Fronted:
    """The server as seen through the gateway: its urls are nginx's, the rest is Triton's."""

    def __init__(self, server: Any, grpc_url: str, http_url: str) -> None:
        self._server, self.grpc_url, self.http_url = server, grpc_url, http_url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


@contextlib.contextmanager
def _gateway(repo: Path, server: Any) -> Iterator[_Fronted]:
    """`export.gateway`'s nginx in front of ``server`` on two free loopback ports."""
    import socket

    from export.gateway.limits import repository_request_limits
    from export.gateway.nginx import NginxProcess, NginxSite

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    site = NginxSite(grpc=[server.grpc_url], http=[server.http_url],
                     grpc_listen=f"127.0.0.1:{ports[0]}", http_listen=f"127.0.0.1:{ports[1]}",
                     limits=repository_request_limits(repo))
    with NginxProcess(site):
        yield _Fronted(server, site.grpc_listen, site.http_listen)


def reload_model(server: Any) -> dict[str, Any]:
    """load_model() on the loaded model (explicit mode): Triton starts a new stub."""
    import tritonclient.grpc as grpcclient

    start = time.perf_counter()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.load_model(MODEL)
    time.sleep(2)
    return {"reload_seconds": round(time.perf_counter() - start, 1), **snapshot(server)}


def run_bursts(server: Any, good: GoodTraffic, variant: Variant,
               bursts: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """``bursts`` rounds of the oversized burst; (outcomes, snapshot per round, seconds)."""
    calls = burst_calls(server, min(64, variant.max_batch_size), variant.legal_in_burst)
    outcomes, snaps = [], []
    good.set_phase("during")
    start = time.perf_counter()
    for _ in range(bursts):
        with ThreadPoolExecutor(max_workers=3) as pool:
            outcomes += list(pool.map(lambda c: _outcome(*c), calls))
        snaps.append(snapshot(server))
    good.set_phase("after")
    return outcomes, snaps, time.perf_counter() - start


def measure(repo: Path, variant: Variant, phase_s: float, idle_s: float,
            bursts: int) -> dict[str, Any]:
    """Baseline -> good traffic before -> bursts during good traffic -> idle (-> reload)."""
    with served(repo, variant) as server:
        with GoodTraffic(server.grpc_url) as good:
            time.sleep(phase_s + 2)  # warm-up (child start-up, every stub path once)
            baseline = snapshot(server)
            good.set_phase("before")
            time.sleep(phase_s)
            outcomes, snaps, during_s = run_bursts(server, good, variant, bursts)
            time.sleep(idle_s)
            memory = {"baseline": baseline, "after_burst": snaps[-1], "bursts": snaps,
                      "after_idle": snapshot(server)}
            if variant.reload:
                memory["after_reload"] = reload_model(server)
            good.set_phase("warmup")
        alive = server.is_running()
    return {"variant": variant.name, "args": variant.args, "env": variant.env,
            "max_batch_size": variant.max_batch_size, "fixed_dims": variant.fixed_dims,
            "ort_arena_off": variant.ort_arena_off, "note": variant.note, "memory": memory,
            "good": {"before": good.stats("before", phase_s),
                     "during": good.stats("during", during_s),
                     "after": good.stats("after", idle_s)},
            "burst_seconds": round(during_s, 1), "burst": outcomes, "server_alive": alive}


# -- report ------------------------------------------------------------------------
def _cells(m: dict[str, Any], who: str, key: str) -> str:
    phases = ["baseline", "after_burst", "after_idle"] + (
        ["after_reload"] if "after_reload" in m else [])
    return " / ".join(f"{m[p][who].get(key, 0):.0f}" for p in phases)


def _within(m: dict[str, Any], who: str) -> str:
    last = m.get("after_reload", m["after_idle"])
    return "yes" if last[who]["VmRSS"] <= 1.1 * m["baseline"][who]["VmRSS"] else "no"


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table per variant: memory (MB) and good-traffic latency."""
    headers = ["variant", "server VmRSS base/burst/idle[/reload]", "server RssAnon",
               "stub VmRSS", "stub RssAnon", "/dev/shm resident per burst",
               "<=110% (server, stub)", "good p50 before/during ms",
               "good p99 before/during ms", "good failed", "oversized rejected"]
    rows = []
    for r in results:
        m, g = r["memory"], r["good"]
        big = [o for o in r["burst"] if "legal" not in o["kind"]]
        shm = " / ".join(f"{s['shm_resident_mb']:.0f}" for s in [m["baseline"], *m["bursts"]]
                         + ([m["after_reload"]] if "after_reload" in m else []))
        rows.append([r["variant"], _cells(m, "server", "VmRSS"),
                     _cells(m, "server", "RssAnon"), _cells(m, "stub", "VmRSS"),
                     _cells(m, "stub", "RssAnon"), shm,
                     f"{_within(m, 'server')}, {_within(m, 'stub')}",
                     f"{g['before'].get('p50_ms')} / {g['during'].get('p50_ms')}",
                     f"{g['before'].get('p99_ms')} / {g['during'].get('p99_ms')}",
                     sum(g[p].get("failed", 0) for p in ("before", "during", "after")),
                     f"{sum(not o['ok'] for o in big)}/{len(big)}"])
    return markdown_table(headers, rows)


def errors_section(results: list[dict[str, Any]]) -> str:
    """One line per distinct burst outcome per variant."""
    lines = ["", "## Burst outcomes", ""]
    for r in results:
        seen = {(o["kind"], o.get("error", "ok")) for o in r["burst"]}
        for kind, text in sorted(seen):
            lines.append(f"- {r['variant']}: {kind}: {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--phase-seconds", type=float, default=4.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", default=NAME, help="results file name (without .json/.md)")
    args = parser.parse_args(argv)
    chosen = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    start = machine_info()
    results = []
    with tempfile.TemporaryDirectory(prefix="kmr-bench-oversized-") as tmp:
        base = export_repo(Path(tmp))
        for variant in chosen:
            repo = variant_repo(base, variant, Path(tmp))
            print(f"[{variant.name}] ...", flush=True)
            results.append(measure(repo, variant, args.phase_seconds, args.idle_seconds,
                                   args.bursts))
            print(json.dumps({k: results[-1][k] for k in ("memory", "good")}), flush=True)
    end_load = [round(x, 2) for x in os.getloadavg()]
    md = "\n".join([f"# Oversized requests (issue 13)\n\n{machine_line(start, end_load)}\n",
                    "Memory in MB (VmRSS includes RssShmem: the /dev/shm pages mapped).\n",
                    table(results), errors_section(results)])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": start, "loadavg_end": end_load, "results": results}
    (args.results_dir / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.results_dir / f"{args.out}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
