"""The export's IVF retrieve model: cluster, build, add raw ids, write and check.

`convert_ivf` is the approximate counterpart of `export.onnx.convert.convert_graph` for
``--index ivf``: the trained item table is clustered (`export.onnx.ivf_index`, faiss
k-means at export time only), the graph (`export.onnx.ivf`) gets the same raw-id front
and back as the exact graphs (`export.onnx.raw_ids.serve_ids`), and the file is written
with the tables inline or as external data and checked like every served graph.

The result keeps the index, so the export can check the served graph against the
numpy reference of the *same* index (`IvfBuild.reference`) and report its recall@k
against exact top-k on sampled users (`IvfBuild.facts`).

Example:
    >>> import tempfile
    >>> from kmr.models import build_recommender
    >>> from export.onnx.graphs import RecommenderWeights
    >>> weights = RecommenderWeights.from_model(build_recommender(20, 300, 8))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     build = convert_ivf(weights, d, k=5, settings=IvfSettings(nlist=6))
    ...     build.converted.path.name, build.facts["num_lists"] >= 6
    ('model.onnx', True)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.onnx.convert import ConversionError, ConvertedModel, check_onnx
from export.onnx.ivf import (
    DEFAULT_EXTERNAL_THRESHOLD_BYTES,
    build_index,
    choose_nprobe,
    default_nlist,
    ivf_graph,
    ivf_reference,
    ivf_tables,
    sample_recall,
    save_ivf,
)
from export.onnx.ivf_index import IvfIndex, IvfSettings
from export.onnx.raw_ids import serve_ids
from kmr import contract
from kmr.vocabulary import Vocabulary


@dataclass
class IvfBuild:
    """One converted IVF graph and what checking it needs.

    Attributes:
        converted: The files written.
        index: The item index baked into the graph.
        user_table: The user table ``[num_users, D]`` as trained.
        k: Results per row.
        nprobe: The graph's default nprobe.
        facts: For the manifest: nlist, num_lists, block_size, nprobe, target_recall,
            sample_recall (recall@k vs exact at the default nprobe), build_seconds.
    """

    converted: ConvertedModel
    index: IvfIndex
    user_table: np.ndarray
    k: int
    nprobe: int
    facts: dict[str, Any] = field(default_factory=dict)

    def reference(self, case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The numpy answer of the same index for a dense parity case."""
        ids, scores = ivf_reference(
            self.index, self.user_table, case[contract.USER_ID],
            case[contract.EXCLUDE_ITEM_IDS], k=self.k,
            nprobe=case.get(contract.NPROBE, 0), default_nprobe=self.nprobe)
        return {contract.TOP_ITEM_IDS: ids, contract.TOP_SCORES: scores}

    def with_nprobe(self, cases: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each case with an ``nprobe`` column mixing default, small, full and odd values."""
        lists = self.index.num_lists
        pattern = np.array([0, 1, min(2, lists), lists, -3, lists + 5], np.int64)
        return [{**case, contract.NPROBE: np.resize(pattern, len(case[contract.USER_ID]))}
                for case in cases]


def convert_ivf(weights: Any, out_dir: str | os.PathLike[str], *, k: int,
                settings: IvfSettings | None = None,
                vocabularies: tuple[Vocabulary, Vocabulary] | None = None,
                external_threshold_bytes: int = DEFAULT_EXTERNAL_THRESHOLD_BYTES) -> IvfBuild:
    """Builds, writes and checks ``out_dir/model.onnx`` for an IVF retrieve model.

    Args:
        weights: `export.onnx.graphs.RecommenderWeights` (tables may be archive views).
        out_dir: An existing folder.
        k: Results per row.
        settings: Index settings (default `IvfSettings()`).
        vocabularies: ``(users, items)`` to bake in (raw ids); None: dense indices.
        external_threshold_bytes: Tables above this total go to external data.

    Raises:
        ConversionError: Bad settings, or the checker / contract check refused the graph.
    """
    settings = settings or IvfSettings()
    problems = settings.problems(weights.num_items)
    if problems:
        raise ConversionError("Invalid IVF settings: " + "; ".join(problems))
    start = time.perf_counter()
    users = np.ascontiguousarray(np.asarray(weights.users, np.float32))
    items = np.asarray(weights.items, np.float32)
    normalization = weights.similarity.normalization
    nlist = settings.nlist or min(default_nlist(len(items)), len(items))
    index = build_index(items, nlist=nlist, normalization=normalization, seed=settings.seed)
    nprobe = settings.nprobe or choose_nprobe(index, users, items, k=k,
                                              target_recall=settings.target_recall,
                                              seed=settings.seed)
    nprobe = min(nprobe, index.num_lists)
    recall = sample_recall(index, users, items, k=k, nprobe=nprobe, seed=settings.seed)
    del items
    proto = ivf_graph(index, users, k=k, nprobe=nprobe, tables=False)
    user_vocab, item_vocab = vocabularies if vocabularies is not None else (None, None)
    serve_ids(proto, contract.GRAPH_RETRIEVE, user_vocab, item_vocab)
    facts = {"index": contract.INDEX_IVF, "nlist": index.nlist, "num_lists": index.num_lists,
             "block_size": index.block_size, "nprobe": nprobe,
             "target_recall": settings.target_recall, "sample_recall": round(recall, 4),
             "normalization": normalization}
    onnx.helper.set_model_props(proto, {key: str(value) for key, value in facts.items()})
    out_dir = Path(out_dir)
    files = save_ivf(proto, ivf_tables(index, users), out_dir,
                     external_threshold_bytes=external_threshold_bytes)
    del proto
    check_onnx(files[0], contract.GRAPH_RETRIEVE, index=contract.INDEX_IVF)
    facts["build_seconds"] = round(time.perf_counter() - start, 3)
    converted = ConvertedModel(files[0], tuple(files), len(files) > 1)
    return IvfBuild(converted, index, users, k, nprobe, facts)
