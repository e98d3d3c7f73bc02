"""What any raw-id graph must pay in onnxruntime, whatever the lookup: the floors.

Two questions the raw-id goals (<= 10% latency, <= 1.5x the vocabulary's memory) raise
for ids that are not ``a, a+1, ...``:

* **Memory floor.** A raw-id graph must hold the raw ids to answer with them (the
  decoder's table). For strings, onnxruntime holds a string tensor as one
  ``std::string`` per element (32 bytes on libstdc++, plus the characters past 15):
  measured here as the RSS a session adds for a model whose only initializer is that
  table (after a first, tiny session took the one-off costs; no memory arena, whose
  rounding would hide the table's own size), against the "packed"
  vocabulary size (UTF-8 bytes + 8 bytes per id).
* **Latency floor.** One lookup per id at least: the time of each standard op that maps
  n ids -- ``LabelEncoder`` (a hash map), the compact lookup's nine ops, and ``Identity``
  (feeding the ids at all: for strings, onnxruntime copies each into a ``std::string``)
  -- against the dense-index rerank graph's whole run at the same batch
  (`benchmarks/results/raw_ids.md`, index ms).

Every variant is timed in turn, call by call (`benchmarks._common.interleaved_ms`).

Usage:
    .venv/bin/python benchmarks/bench_id_floor.py [--items 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, interleaved_ms, machine_info, markdown_table  # noqa: E402

N_CANDIDATES = 100
BATCHES = (1, 64)

_TABLE_RSS = """
import sys, json
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto as T
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
n, kind = int(sys.argv[1]), sys.argv[2]
def model(n):
    if kind == "str":
        table = helper.make_tensor("t", T.STRING, [n], [f"sku-{i:09d}".encode() for i in range(n)])
    else:
        table = onnx.numpy_helper.from_array(np.arange(n, dtype=np.int64) * 7 + 3, "t")
    out_type = T.STRING if kind == "str" else T.INT64
    graph = helper.make_graph(
        [helper.make_node("Gather", ["t", "i"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("i", T.INT64, ["n"])],
        [helper.make_tensor_value_info("y", out_type, ["n"])], [table])
    path = os.path.join(tempfile.mkdtemp(), f"table{n}.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
import gc, os, tempfile
small, big = model(1), model(n)
gc.collect()
options = ort.SessionOptions()
options.enable_cpu_mem_arena = False  # exact allocations: no arena rounding
warm = ort.InferenceSession(small, options, providers=["CPUExecutionProvider"])  # one-off
before = rss()
session = ort.InferenceSession(big, options, providers=["CPUExecutionProvider"])
print(json.dumps({"rss_delta_bytes": rss() - before}))
"""


def table_rss(n: int, kind: str) -> int:
    """RSS a fresh session adds for one ``[n]`` raw-id table (int64 or string)."""
    out = subprocess.run([sys.executable, "-c", _TABLE_RSS, str(n), kind], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_delta_bytes"]


def _model(nodes: list, in_type: int):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["n"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 2)])


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def lookup_sessions(n: int, threads: int) -> dict[str, tuple]:
    """``{name: (session, feed maker)}``: each maps ``B x N`` ids (flat) to indices."""
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx.compact_ids import build_compact_lookup, encoder_model

    ints = np.arange(n, dtype=np.int64) * 7 + 3
    strings = [f"sku-{i:09d}" for i in range(n)]
    label_int = helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                                 keys_int64s=ints.tolist(), values_int64s=list(range(n)),
                                 default_int64=-1)
    label_str = helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                                 keys_strings=strings, values_int64s=list(range(n)),
                                 default_int64=-1)
    as_ints = lambda index: ints[index.ravel()]  # noqa: E731
    as_strings = lambda index: np.array([strings[i] for i in index.ravel()],  # noqa: E731
                                        dtype=object)
    cast = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)
    zeros = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["y"],
                              value=numpy_helper.from_array(np.array([0], np.int64)))]
    models = {
        "int64 ids: Cast to int64 (feeding only)": (_model([cast], TensorProto.INT64), as_ints),
        "int64 ids: LabelEncoder": (_model([label_int], TensorProto.INT64), as_ints),
        "int64 ids: compact (9 ops)": (encoder_model(build_compact_lookup(ints)), as_ints),
        "string ids: Shape + zeros (feeding only)": (_model(zeros, TensorProto.STRING),
                                                      as_strings),
        "string ids: LabelEncoder": (_model([label_str], TensorProto.STRING), as_strings),
    }
    return {name: (_session(model, threads), make) for name, (model, make) in models.items()}


def time_lookups(n: int, threads: int) -> list[dict]:
    """Median ms of each lookup at each batch, interleaved."""
    sessions = lookup_sessions(n, threads)
    rows = []
    for batch in BATCHES:
        index = np.random.default_rng(batch).integers(0, n, (batch, N_CANDIDATES))
        runs = {}
        for name, (session, make) in sessions.items():
            feed = {session.get_inputs()[0].name: make(index)}
            runs[name] = lambda s=session, f=feed: s.run(None, f)
        for name, stats in interleaved_ms(runs, repeats=300, warmup=5, max_seconds=8.0).items():
            rows.append({"lookup": name, "batch": batch, "ids": batch * N_CANDIDATES, **stats})
    return rows


def _index_rerank_ms() -> dict[int, float]:
    """The dense-index rerank graph's median ms per batch, from raw_ids.json (if present)."""
    path = RESULTS_DIR / "raw_ids.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["comparison"]["latency"]
    return {r["batch"]: r["index_ms"] for r in rows if r["graph"] == "rerank"
            and r["kind"] == "sparse"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    n = args.items
    packed = {"int": 8 * n, "str": sum(len(f"sku-{i:09d}") for i in range(n)) + 8 * n}
    memory = [{"ids": kind, "packed_bytes": packed[kind], "table_rss_bytes": table_rss(n, kind)}
              for kind in ("int", "str")]
    latency = time_lookups(n, args.threads)
    base = _index_rerank_ms()
    payload = {"machine": machine_info(), "items": n, "threads": args.threads,
               "memory": memory, "latency": latency, "index_rerank_ms": base}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "id_floor.json").write_text(json.dumps(payload, indent=2))
    mb = 1 << 20
    mem_rows = [[m["ids"], round(m["packed_bytes"] / mb, 1), round(m["table_rss_bytes"] / mb, 1),
                 round(m["table_rss_bytes"] / m["packed_bytes"], 2)] for m in memory]
    feeding = {r["batch"]: r["median_ms"] for r in latency
               if r["lookup"].startswith("int64 ids: Cast")}
    lat_rows = [[r["lookup"], r["batch"], r["ids"], r["median_ms"],
                 round(r["median_ms"] * 1e6 / r["ids"], 1),
                 base.get(r["batch"], "-"),
                 round((r["median_ms"] - feeding[r["batch"]]) / base[r["batch"]], 3)
                 if r["batch"] in base else "-"]
                for r in latency]
    m = payload["machine"]
    lines = [
        "# Raw-id floors in onnxruntime (what any lookup must pay)", "",
        f"{n:,} ids (int: 7i+3; str: `sku-000000042`). Machine: {m.get('Model name', '?')}, "
        f"{m.get('cpu_count')} cores, onnxruntime {m['versions'].get('onnxruntime')}, "
        f"intra-op threads={args.threads}, load average {m.get('loadavg')}.", "",
        f"Rerun: `.venv/bin/python benchmarks/bench_id_floor.py --items {n}`", "",
        "## The raw-id table alone (the decoder must hold it): fresh-session RSS", "",
        "A minimal model (one Gather over the table); the RSS includes what onnxruntime keeps "
        "besides the tensor (here about one more copy of the table: compare the int row). "
        "A string tensor is one 32-byte std::string per id (libstdc++; SSO up to 15 "
        "characters), so the string table alone is >= 32 B/id, 1.6x the packed size of "
        "13-character ids, before any lookup.", "",
        markdown_table(["ids", "packed MB (8 B/id; str: UTF-8 + 8 B/id)", "session RSS MB",
                        "RSS / packed"], mem_rows), "",
        "## One lookup of B x 100 ids (median, interleaved) vs the whole index rerank graph", "",
        "'added' = (this session's median - the int64 feeding-only session's, which is "
        "session.run's own cost, paid by the index graph too) / the index rerank graph's "
        "median. The goal allows 0.10 for everything raw ids add.", "",
        markdown_table(["lookup", "B", "ids", "median ms", "ns per id",
                        "index rerank graph ms (raw_ids.md)", "added / index graph"],
                       lat_rows), "",
    ]
    (RESULTS_DIR / "id_floor.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
