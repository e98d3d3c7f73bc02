"""``kmr-export export``: a trained model.keras -> ONNX -> Triton model repository.

A thin wrapper over `export.api.export_model`; prints one line per stage with its
duration, where it wrote, and the parity line.

Example:
    $ kmr-export export --model artifacts/model.keras --repo model_repository \\
        --name recommender --graph both --k 10
"""

from __future__ import annotations

import argparse
import time

from export.api import BACKENDS, GRAPH_CHOICES, ID_MODES  # light: no TensorFlow at import
from kmr import contract


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``export`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="trained model.keras (vocabularies "
                        "are read from the same folder)")
    parser.add_argument("--repo", default="model_repository", help="Triton model repository")
    parser.add_argument("--name", default="recommender",
                        help="model name; --graph both writes <name>_rerank and <name>_retrieve")
    parser.add_argument("--graph", default=contract.GRAPH_RERANK, choices=GRAPH_CHOICES,
                        help="served graph(s) to export (default: rerank)")
    parser.add_argument("--k", type=int, default=10, help="results per request (constant)")
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                        help="onnxruntime (production images) or python (local server)")
    parser.add_argument("--version", type=int, default=None,
                        help="version to write (default: next free version)")
    parser.add_argument("--force", action="store_true", help="replace an existing --version")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--queue-delay-us", type=int, default=100)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--user-vocabulary", default=None, metavar="FILE",
                        help="raw user ids: our JSON, or one id per line (.txt), or the "
                        "first column of a .csv/.tsv with a header (default: the file train "
                        "saved next to the model, else identity: ids are the dense indices)")
    parser.add_argument("--item-vocabulary", default=None, metavar="FILE",
                        help="raw item ids, same formats as --user-vocabulary")
    parser.add_argument("--ids", choices=ID_MODES, default="raw",
                        help="raw (default): the vocabularies are baked into the served graph, "
                        "which speaks raw ids; index: dense indices (you map ids yourself)")
    parser.add_argument("--id-lookup", choices=("auto", "fast", "compact"), default="auto",
                        help="raw ids that are not a, a+1, ...: fast (LabelEncoder, ~80 B/id), "
                        "compact (int ids: minimal perfect hash, ~10 B/id, a few us more per "
                        "request) or auto (default: compact for the exact retrieve graph)")
    parser.add_argument("--index", choices=contract.INDEXES, default=contract.INDEX_EXACT,
                        help="retrieve graph: exact (default, every item scored), ivf "
                        "(approximate: k-means lists, a request scores its nprobe best lists) "
                        "or int8 (exact top-k, faster: int8 scoring, float32 re-score)")
    parser.add_argument("--nlist", type=int, default=None,
                        help="--index ivf: k-means clusters (default about 4 sqrt(items))")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="--index ivf: default lists per request, which a request may "
                        "override (default: the smallest reaching --target-recall)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="--index ivf: recall@k vs exact the default nprobe must reach "
                        "on 256 sampled users (default 0.95)")
    parser.add_argument("--rescore", type=int, default=None,
                        help="--index int8: re-score the best k x RESCORE candidates in float32 "
                        "(default: twice the smallest depth exact on 256 sampled users)")
    parser.add_argument("--external-data-threshold-mb", type=float, default=None,
                        help="weights above this total size go to model.onnx.data "
                        "(default 64; 0 forces external data)")


def run(args: argparse.Namespace) -> int:
    """Runs the export; raises `export.errors.ExportError` on bad input (exit code 1)."""
    from export.api import ExportOptions, export_model

    started = time.perf_counter()

    def progress(stage: str, seconds: float, message: str) -> None:
        print(f"[{stage:>13}] {seconds:7.2f} s  {message}", flush=True)

    result = export_model(
        args.model,
        args.repo,
        ExportOptions(
            name=args.name,
            graph=args.graph,
            k=args.k,
            backend=args.backend,
            version=args.version,
            force=args.force,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.queue_delay_us,
            instances=args.instances,
            external_data_threshold_mb=args.external_data_threshold_mb,
            user_vocabulary=args.user_vocabulary,
            item_vocabulary=args.item_vocabulary,
            ids=args.ids,
            id_lookup=args.id_lookup,
            index=args.index,
            nlist=args.nlist,
            nprobe=args.nprobe,
            target_recall=args.target_recall,
            rescore=args.rescore,
        ),
        progress=progress,
    )
    for model in result.models:
        p = model.parity
        print(
            f"wrote {model.name} version {model.version} ({model.graph_kind}) -> "
            f"{model.version_dir}"
        )
        print(
            f"  parity: max |score diff| {p['max_abs_score_diff']:.3g}, "
            f"top-k ids equal: {'yes' if p['ids_equal'] else 'no'}"
        )
        i = model.index
        if i.get("index") == contract.INDEX_IVF:
            print(f"  ivf: {i['num_lists']} lists, default nprobe {i['nprobe']}, "
                  f"recall@{args.k} {i['sample_recall']} vs exact on sampled users")
        elif i.get("index") == contract.INDEX_INT8:
            print(f"  int8: default rescore {i['rescore']} (k x {i['rescore']} candidates "
                  "re-scored in float32)")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
