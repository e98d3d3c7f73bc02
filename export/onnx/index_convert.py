"""The export's retrieval-index graphs: build, add raw ids, write and check.

`convert_index` is the counterpart of `export.onnx.convert.convert_graph` for
``--index ivf`` (`export.onnx.ivf`: k-means lists, faiss at export time only) and
``--index int8`` (`export.onnx.int8`: int8 scoring pass + exact float32 re-score). The
graph gets the same raw-id front and back as the exact graphs
(`export.onnx.raw_ids.serve_ids`), its tables are written inline or as external data,
and the file is checked like every served graph.

The result (`IndexBuild`) keeps what checking the served graph needs: the IVF graph is
compared with the numpy reference of its *own* index (its recall against exact is in
``facts``); the int8 graph with the exact float32 reference, since it must equal it.

Example:
    >>> import tempfile
    >>> from kmr.models import build_recommender
    >>> from export.onnx.graphs import RecommenderWeights
    >>> weights = RecommenderWeights.from_model(build_recommender(20, 300, 8))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     build = convert_index("ivf", weights, d, k=5, settings=IndexSettings(nlist=6))
    ...     build.converted.path.name, build.facts["num_lists"] >= 6
    ('model.onnx', True)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.onnx import int8, ivf
from export.onnx.block_graph import DEFAULT_EXTERNAL_THRESHOLD_BYTES, save_with_tables
from export.onnx.convert import ConversionError, ConvertedModel, check_onnx
from export.onnx.ivf_index import IndexSettings
from export.onnx.raw_ids import ServedIds, serve_ids
from kmr import contract


@dataclass
class IndexBuild:
    """One converted index graph and what checking it needs.

    Attributes:
        setting: The per-request input (``nprobe`` or ``rescore``).
        default: Its exported default.
        facts: For the manifest (``index`` plus the index's own figures).
        reference: The dense reference of a parity case, or None to use the exact
            float32 reference (int8: the graph must equal exact top-k).
        values: Per-row setting values the parity cases mix.
        index: What the graph was built from: the `export.onnx.ivf_index.IvfIndex` or
            the `export.onnx.int8.QuantizedItems`.
        converted: The files written (set once `convert_index` has written them).
    """

    setting: str
    default: int
    facts: dict[str, Any] = field(default_factory=dict)
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    values: tuple[int, ...] = (0,)
    index: Any = None
    converted: ConvertedModel | None = None

    def with_setting(self, cases: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each dense parity case with the setting's column (`values` repeated per row)."""
        pattern = np.array(self.values, np.int64)
        return [{**case, self.setting: np.resize(pattern, len(case[contract.USER_ID]))}
                for case in cases]

    def summary(self, k: int) -> str:
        """One line for the export's progress report."""
        f = self.facts
        if f["index"] == contract.INDEX_IVF:
            return (f"IVF {f['num_lists']} lists (nlist {f['nlist']}), default nprobe "
                    f"{f['nprobe']}: recall@{k} {f['sample_recall']} vs exact on sampled users")
        return (f"int8 scoring + float32 re-score of k x {f['rescore']} candidates: exact "
                f"top-{k} on {f['sample_agreement']:.0%} of sampled users at k x "
                f"{f['sample_depth']}")


def _ivf(users: np.ndarray, items: np.ndarray, normalization: str, k: int,
         settings: IndexSettings) -> tuple[onnx.ModelProto, dict, IndexBuild]:
    index, nprobe, recall = ivf.plan_ivf(users, items, k=k, normalization=normalization,
                                         settings=settings)
    facts = {"index": contract.INDEX_IVF, "nlist": index.nlist, "num_lists": index.num_lists,
             "block_size": index.block_size, "nprobe": nprobe,
             "target_recall": settings.target_recall, "sample_recall": round(recall, 4)}

    def reference(case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, scores = ivf.ivf_reference(
            index, users, case[contract.USER_ID], case[contract.EXCLUDE_ITEM_IDS], k=k,
            nprobe=case.get(contract.NPROBE, 0), default_nprobe=nprobe)
        return {contract.TOP_ITEM_IDS: ids, contract.TOP_SCORES: scores}

    lists = index.num_lists
    build = IndexBuild(contract.NPROBE, nprobe, facts, reference,
                       (0, 1, min(2, lists), lists, -3, lists + 5), index)
    proto = ivf.ivf_graph(index, users, k=k, nprobe=nprobe, tables=False)
    return proto, ivf.ivf_tables(index, users), build


def _int8(users: np.ndarray, items: np.ndarray, normalization: str, k: int,
          settings: IndexSettings) -> tuple[onnx.ModelProto, dict, IndexBuild]:
    table = int8.quantize_items(items, normalization)
    shallowest, agreement = int8.choose_rescore(table, users, k=k, seed=settings.seed)
    top = int8.max_rescore(table.num_items, k, items.shape[1])
    # Twice the depth that was exact on every sampled user: a margin for users not sampled.
    rescore = min(settings.rescore or 2 * shallowest, top)
    facts = {"index": contract.INDEX_INT8, "rescore": rescore, "max_rescore": top,
             "sample_depth": shallowest, "sample_agreement": round(agreement, 4),
             "int8_table_bytes": int(table.q_t.nbytes)}
    build = IndexBuild(contract.RESCORE, rescore, facts,
                       values=(0, rescore, min(2 * rescore, top), top + 7, -1), index=table)
    proto = int8.int8_graph(table, users, k=k, rescore=rescore, tables=False)
    return proto, int8.int8_tables(table, users), build


_BUILDERS = {contract.INDEX_IVF: _ivf, contract.INDEX_INT8: _int8}


def convert_index(index: str, weights: Any, out_dir: str | os.PathLike[str], *, k: int,
                  settings: IndexSettings | None = None,
                  ids: ServedIds | None = None,
                  external_threshold_bytes: int = DEFAULT_EXTERNAL_THRESHOLD_BYTES
                  ) -> IndexBuild:
    """Builds, writes and checks ``out_dir/model.onnx`` for an ``index`` retrieve model.

    Args:
        index: ``"ivf"`` or ``"int8"``.
        weights: `export.onnx.graphs.RecommenderWeights` (tables may be archive views).
        out_dir: An existing folder.
        k: Results per row.
        settings: Index settings (default `IndexSettings()`).
        ids: The vocabularies to bake in (raw ids, in ``weights``' row order); None:
            dense indices.
        external_threshold_bytes: Tables above this total go to external data.

    Raises:
        ConversionError: Bad settings, or the checker / contract check refused the graph.
    """
    settings = settings or IndexSettings()
    problems = settings.problems(weights.num_items)
    if problems:
        raise ConversionError("Invalid index settings: " + "; ".join(problems))
    start = time.perf_counter()
    users = np.ascontiguousarray(np.asarray(weights.users, np.float32))
    items = np.asarray(weights.items, np.float32)
    normalization = weights.similarity.normalization
    proto, tables, build = _BUILDERS[index](users, items, normalization, k, settings)
    del items
    serve_ids(proto, contract.GRAPH_RETRIEVE, ids)
    build.facts["normalization"] = normalization
    onnx.helper.set_model_props(proto, {key: str(v) for key, v in build.facts.items()})
    files = save_with_tables(proto, tables, Path(out_dir),
                             external_threshold_bytes=external_threshold_bytes)
    del proto, tables
    check_onnx(files[0], contract.GRAPH_RETRIEVE, index=index)
    build.facts["build_seconds"] = round(time.perf_counter() - start, 3)
    build.converted = ConvertedModel(files[0], tuple(files), len(files) > 1)
    return build
