"""Cost of baking the id vocabularies into the served ONNX graphs (``ids="raw"`` vs ``"index"``).

One random-weight recommender per size is built and saved (subprocess), then for int ids
(``int``: contiguous 0..n-1, served by arithmetic, no table; ``sparse``: 7i+3, served by
the default lookups -- LabelEncoder in the rerank graph, the compact minimal perfect hash
in the retrieve graph -- and once more with ``id_lookup="compact"`` for both) and string
ids (``sku-000000042``, LabelEncoder) it is exported with ``ids="raw"`` and ``ids="index"``
(subprocess under ``/usr/bin/time -v``: wall time, peak RSS). Each published
``model.onnx`` is loaded in a fresh process (load time, RSS delta) and timed in-process
with onnxruntime (CPU): rerank of N candidates and full-catalogue retrieve, B=1 and B=64.

Goals (issue): raw-id mode adds <= 10% latency and <= 1.5x the memory of the item
vocabulary itself. Vocabulary memory ("vocab bytes") is defined as 8 bytes per int id;
for string ids, the UTF-8 bytes plus 8 bytes per id (an offset / pointer). The CPython
size (``sys.getsizeof`` of each id + an 8-byte tuple slot) is reported alongside.

Usage:
    .venv/bin/python benchmarks/bench_raw_ids.py [--sizes 100000:1000000 ...] [--dim 32]
        [--threads 2] [--workdir /tmp/kmr-raw-ids] [--kinds int sparse str] [--out raw_ids]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, machine_info, markdown_table  # noqa: E402
from benchmarks.bench_export_scale import _time_v  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_CANDIDATES = 100
BATCHES = (1, 64)
KINDS = ("int", "sparse", "str")
K = 10

_MAKE_MODEL = """
import os, sys, shutil
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import tiny_model
users, items, dim, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = tiny_model(users, items, dim)
def ids(kind, n, text):
    if kind == "int":
        return list(range(n))
    if kind == "sparse":
        return [7 * i + 3 for i in range(n)]
    return [text.format(i) for i in range(n)]

for kind in ("int", "sparse", "str"):
    folder = os.path.join(out, kind)
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, contract.MODEL_FILE))
    u = ids(kind, users, "user-{:08d}")
    v = ids(kind, items, "sku-{:09d}")
    Vocabulary(u).save(os.path.join(folder, contract.USER_VOCAB_FILE))
    Vocabulary(v).save(os.path.join(folder, contract.ITEM_VOCAB_FILE))
"""

_EXPORT = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())
from export.api import ExportOptions, export_model
ids, _, lookup = sys.argv[3].partition("+")
result = export_model(sys.argv[1], sys.argv[2], ExportOptions(graph="both", k=int(sys.argv[4]),
                      ids=ids, id_lookup=lookup or "auto", force=True))
print("TIMINGS", __import__("json").dumps(result.timings))
"""

_LOAD = """
import sys, time, json
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import onnxruntime as ort
before = rss("VmRSS:")
start = time.perf_counter()
options = ort.SessionOptions()
options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], sess_options=options,
                               providers=["CPUExecutionProvider"])
seconds = time.perf_counter() - start
print(json.dumps({"load_seconds": seconds, "rss_delta_bytes": rss("VmRSS:") - before,
                  "peak_rss_delta_bytes": rss("VmHWM:") - before}))
"""


def raw_feed(kind: str, index: np.ndarray, text: str) -> np.ndarray:
    """Raw ids of dense indices as a feed array (int64, or object of ``text.format(i)``)."""
    if kind == "int":
        return index.astype(np.int64)
    if kind == "sparse":
        return index.astype(np.int64) * 7 + 3
    flat = [text.format(i) for i in index.ravel()]
    return np.array(flat, dtype=object).reshape(index.shape)


def vocab_bytes(kind: str, items: int, users: int) -> dict[str, int]:
    """The item vocabulary's size: the compact definition and CPython's (see the docstring);
    ``both_vocab_bytes``: users and items, compact definition."""
    if kind in ("int", "sparse"):
        return {"vocab_bytes": 8 * items, "both_vocab_bytes": 8 * (items + users),
                "vocab_python_bytes": sum(sys.getsizeof(i) for i in range(items)) + 8 * items}
    utf8 = sum(len(f"sku-{i:09d}".encode()) for i in range(items))
    user_utf8 = users * len("user-00000000")
    one = sys.getsizeof("sku-000000000")
    return {"vocab_bytes": utf8 + 8 * items, "both_vocab_bytes": utf8 + user_utf8 +
            8 * (items + users), "vocab_python_bytes": (one + 8) * items}


def onnx_files(repo: Path) -> dict[str, Path]:
    """``{graph kind: model.onnx}`` of a published repository (highest version)."""
    found = {}
    for kind in ("rerank", "retrieve"):
        versions = sorted((repo / f"recommender_{kind}").iterdir(), key=lambda p: p.name)
        found[kind] = next(v / "model.onnx" for v in reversed(versions) if v.is_dir())
    return found


def file_bytes(onnx_path: Path) -> dict[str, int]:
    """Sizes of model.onnx and its external data (0 when inline)."""
    data = onnx_path.with_name("model.onnx.data")
    return {"onnx_bytes": onnx_path.stat().st_size,
            "data_bytes": data.stat().st_size if data.exists() else 0}


def load_in_fresh_process(onnx_path: Path) -> dict:
    """Session load time and RSS delta in a new python process (CPU provider)."""
    wall, peak, out = _time_v([sys.executable, "-c", _LOAD, str(onnx_path)])
    result = json.loads(out.strip().splitlines()[-1])
    result["process_peak_rss_bytes"] = peak
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def export_one(artifacts: Path, repo: Path, mode: str) -> dict:
    """Exports both graphs with ``ids=mode`` in a subprocess; wall time and peak RSS."""
    shutil.rmtree(repo, ignore_errors=True)
    wall, peak, out = _time_v([sys.executable, "-c", _EXPORT, str(artifacts / "model.keras"),
                               str(repo), mode, str(K)])
    timings = next((json.loads(line[8:]) for line in out.splitlines()
                    if line.startswith("TIMINGS ")), {})
    return {"export_seconds": round(wall, 2), "export_peak_rss_bytes": peak,
            "stage_seconds": {k: round(v, 2) for k, v in timings.items()}}


def make_feed(session, graph: str, kind: str, mode: str, batch: int, items: int,
              rng: np.random.Generator, num_users: int = 1000) -> dict[str, np.ndarray]:
    """A request of ``batch`` rows; raw ids (``kind``) for ``mode="raw"``, else indices."""
    users = rng.integers(0, num_users, size=(batch,))  # user_id is [B] in ONNX
    other = rng.integers(0, items, size=(batch, N_CANDIDATES if graph == "rerank" else 1))
    names = [i.name for i in session.get_inputs()]
    if mode.startswith("raw"):
        feed = {names[0]: raw_feed(kind, users, "user-{:08d}"),
                names[1]: raw_feed(kind, other, "sku-{:09d}")}
    else:
        feed = {names[0]: users.astype(np.int64), names[1]: other.astype(np.int64)}
    return feed


def time_pair(paths: dict[str, Path], graph: str, kind: str, items: int, threads: int,
              num_users: int = 1000) -> dict[str, list[dict]]:
    """Median ``session.run`` latency of the index and raw graphs, interleaved call by call
    (so the ratio is measured side by side), for each batch size; mode -> rows."""
    from benchmarks._common import interleaved_ms, ort_session

    sessions = {mode: ort_session(path, threads=threads) for mode, path in paths.items()}
    rows: dict[str, list[dict]] = {mode: [] for mode in sessions}
    for batch in BATCHES:
        runs = {}
        for mode, session in sessions.items():
            feed = make_feed(session, graph, kind, mode, batch, items,
                             np.random.default_rng(batch), num_users)
            runs[mode] = lambda s=session, f=feed: s.run(None, f)
        budget = 6.0 if graph == "rerank" else 12.0
        for mode, stats in interleaved_ms(runs, repeats=300, warmup=3,
                                          max_seconds=budget).items():
            rows[mode].append({"graph": graph, "batch": batch, **stats})
    return rows


def run_config(artifacts: Path, repo: Path, kind: str, mode: str) -> tuple[dict, dict]:
    """Export, file sizes and fresh-process load of one (id kind, ids mode); its ONNX paths."""
    print(f"  export ids={mode} ({kind} ids) ...", flush=True)
    result = {"kind": kind, "mode": mode, **export_one(artifacts, repo, mode)}
    result["item_vocabulary_json_bytes"] = (artifacts / "item_vocabulary.json").stat().st_size
    result["graphs"] = {}
    paths = onnx_files(repo)
    for graph, path in paths.items():
        entry = {**file_bytes(path), **load_in_fresh_process(path)}
        result["graphs"][graph] = entry
        print(f"    {graph}: {json.dumps(entry)}", flush=True)
    return result, paths


def run_kind(artifacts: Path, workdir: Path, kind: str, items: int,
             threads: int) -> list[dict]:
    """Both modes of one id kind: exported, loaded, then timed side by side."""
    entries, paths = {}, {}
    modes = ("index", "raw", "raw+compact") if kind == "sparse" else ("index", "raw")
    for mode in modes:
        entries[mode], paths[mode] = run_config(artifacts, workdir / f"repo-{mode}", kind, mode)
    for graph in paths["index"]:
        timed = time_pair({m: paths[m][graph] for m in paths}, graph, kind, items, threads)
        for mode, rows in timed.items():
            entries[mode]["graphs"][graph]["latency"] = rows
    for mode in paths:
        shutil.rmtree(workdir / f"repo-{mode}", ignore_errors=True)
    return [entries[mode] for mode in modes]


def run_size(users: int, items: int, dim: int, threads: int, workdir: Path,
             kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Builds the model once, then every (id kind, ids mode) configuration."""
    base = workdir / f"art_{users}_{items}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    print(f"building {users} users x {items} items, D={dim} ...", flush=True)
    make_s, make_rss, _ = _time_v([sys.executable, "-c", _MAKE_MODEL, str(users), str(items),
                                   str(dim), str(base)])
    results = []
    for kind in kinds:
        for entry in run_kind(base / kind, workdir, kind, items, threads):
            entry.update(users=users, items=items, dim=dim, make_model_seconds=round(make_s, 1),
                         **vocab_bytes(kind, items, users))
            results.append(entry)
    shutil.rmtree(base, ignore_errors=True)
    return results


def _pairs(results: list[dict]):
    """``(index entry, raw entry)`` of each (size, id kind)."""
    by_key = {(r["items"], r["kind"], r["mode"]): r for r in results}
    for (items, kind, mode), raw in by_key.items():
        if mode.startswith("raw") and (items, kind, "index") in by_key:
            yield by_key[(items, kind, "index")], raw


def _label(raw: dict) -> str:
    """``sparse`` (default lookups: LabelEncoder for rerank, compact for retrieve) or
    ``sparse, compact`` (compact for both graphs)."""
    return raw["kind"] + (", compact" if raw["mode"] == "raw+compact" else "")


def compare(results: list[dict]) -> dict[str, list[dict]]:
    """Raw/index latency ratios and raw-minus-index memory over the vocabulary's bytes."""
    latency, memory = [], []
    for index, raw in _pairs(results):
        vocab = raw["vocab_bytes"]
        for graph in ("rerank", "retrieve"):
            gi, gr = index["graphs"][graph], raw["graphs"][graph]
            for li, lr in zip(gi["latency"], gr["latency"], strict=True):
                ratio = lr["median_ms"] / li["median_ms"]
                latency.append({"items": raw["items"], "kind": _label(raw), "graph": graph,
                                "batch": li["batch"], "index_ms": li["median_ms"],
                                "raw_ms": lr["median_ms"], "ratio": round(ratio, 3),
                                "index_p10_ms": li["p10_ms"], "raw_p10_ms": lr["p10_ms"],
                                "p10_ratio": round(lr["p10_ms"] / li["p10_ms"], 3),
                                "goal_met": ratio <= 1.10})
            extra = gr["rss_delta_bytes"] - gi["rss_delta_bytes"]
            files = (gr["onnx_bytes"] + gr["data_bytes"]) - (gi["onnx_bytes"] + gi["data_bytes"])
            memory.append({"items": raw["items"], "kind": _label(raw), "graph": graph,
                           "vocab_bytes": vocab, "vocab_python_bytes": raw["vocab_python_bytes"],
                           "session_extra_bytes": extra,
                           "session_extra_over_vocab": round(extra / vocab, 2),
                           "session_extra_over_both_vocabs": round(
                               extra / raw["both_vocab_bytes"], 2),
                           "file_extra_bytes": files,
                           "goal_met": extra <= 1.5 * vocab})
        ex = raw["export_peak_rss_bytes"] - index["export_peak_rss_bytes"]
        memory.append({"items": raw["items"], "kind": _label(raw), "graph": "export (both)",
                       "vocab_bytes": vocab, "vocab_python_bytes": raw["vocab_python_bytes"],
                       "session_extra_bytes": ex, "session_extra_over_vocab": round(ex / vocab, 2),
                       "session_extra_over_both_vocabs": round(ex / raw["both_vocab_bytes"], 2),
                       "file_extra_bytes": None, "goal_met": ex <= 1.5 * vocab})
    return {"latency": latency, "memory": memory}


def _config_table(results: list[dict]) -> str:
    mb = 1 << 20
    rows = []
    for r in results:
        g = r["graphs"]
        rows.append([
            f"{r['items']:,}", r["kind"], r["mode"], r["export_seconds"],
            round(r["export_peak_rss_bytes"] / 2**30, 2),
            " / ".join(f"{(g[k]['onnx_bytes'] + g[k]['data_bytes']) / mb:.0f}" for k in g),
            " / ".join(f"{g[k]['onnx_bytes'] / mb:.0f}" for k in g),
            round(r["item_vocabulary_json_bytes"] / mb, 1),
            " / ".join(f"{g[k]['load_seconds']:.2f}" for k in g),
            " / ".join(f"{g[k]['rss_delta_bytes'] / mb:.0f}" for k in g),
        ])
    headers = ["items", "ids", "mode", "export s", "export peak RSS GB",
               "ONNX MB total (rerank / retrieve)", "of which model.onnx MB",
               "item vocab JSON MB", "ORT load s", "ORT load RSS delta MB"]
    return markdown_table(headers, rows)


def write_results(results: list[dict], meta: dict, stem: str = "raw_ids") -> None:
    """Writes ``<stem>.json`` and ``<stem>.md``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary = compare(results)
    payload = {**meta, "results": results, "comparison": summary}
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    mb = 1 << 20
    lat = [[f"{r['items']:,}", r["kind"], r["graph"], r["batch"], r["index_ms"], r["raw_ms"],
            r["ratio"], r["index_p10_ms"], r["raw_p10_ms"], r["p10_ratio"],
            "yes" if r["goal_met"] else "**no**"] for r in summary["latency"]]
    mem = [[f"{r['items']:,}", r["kind"], r["graph"], round(r["vocab_bytes"] / mb, 1),
            round(r["vocab_python_bytes"] / mb, 1), round(r["session_extra_bytes"] / mb, 1),
            r["session_extra_over_vocab"], r["session_extra_over_both_vocabs"],
            "-" if r["file_extra_bytes"] is None else round(r["file_extra_bytes"] / mb, 1),
            "yes" if r["goal_met"] else "**no**"] for r in summary["memory"]]
    m = meta["machine"]
    lines = [
        "# Raw ids baked into the served graph vs dense indices", "",
        f"Machine: {m.get('Model name', '?')}, {m.get('cpu_count')} cores, "
        f"{m.get('ram_gb')} GB RAM, onnxruntime {m['versions'].get('onnxruntime')}, "
        f"load average at start {m.get('loadavg')}. D={meta['dim']}, k={K}, "
        f"rerank N={N_CANDIDATES}, onnxruntime intra-op threads={meta['threads']}.", "",
        f"Rerun: `{meta['command']}`", "",
        "## Export, files, session load", "", _config_table(results), "",
        "## Latency (median `session.run`, pre-built feeds, index and raw sessions called in "
        "turn; goal raw/index <= 1.10)", "",
        markdown_table(["items", "ids", "graph", "B", "index ms", "raw ms", "raw/index",
                        "index p10", "raw p10", "p10 raw/index", "median <= 1.10"], lat), "",
        "## Memory added by raw ids (goal <= 1.5x the item vocabulary)", "",
        "vocab MB: 8 B/id (int) or UTF-8 bytes + 8 B/id (str); CPython MB: sys.getsizeof "
        "per id + 8 B tuple slot. The users' vocabulary (same kind of ids) is baked in too: "
        "the (user + item vocab) column counts it. 'extra' = RSS delta of a fresh onnxruntime "
        "session (raw minus index), or the export process's peak RSS (raw minus index).", "",
        markdown_table(["items", "ids", "graph", "item vocab MB", "CPython MB", "extra MB",
                        "extra / item vocab", "extra / (user + item vocab)", "extra file MB",
                        "<= 1.5x item vocab"], mem), "",
    ]
    (RESULTS_DIR / f"{stem}.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100000:1000000"], help="users:items")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--workdir", default="/tmp/kmr-raw-ids")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--out", default="raw_ids", help="results file name (no suffix)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.chdir(ROOT)
    meta = {"machine": machine_info(), "dim": args.dim, "threads": args.threads,
            "command": ".venv/bin/python benchmarks/bench_raw_ids.py " + " ".join(sys.argv[1:])}
    results: list[dict] = []
    for size in args.sizes:
        users, items = (int(x) for x in size.split(":"))
        results += run_size(users, items, args.dim, args.threads, Path(args.workdir),
                            tuple(args.kinds))
        write_results(results, meta, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
