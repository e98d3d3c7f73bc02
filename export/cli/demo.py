"""``kmr-export demo``: the main job, end to end, in one command.

Trains on the built-in synthetic data (or ``--data`` / ``$KMR_DATA``), exports both
served graphs into a fresh model repository (python backend, for the local server),
starts the local tritonserver, asks it for recommendations through the gRPC client,
prints them (with titles when an item metadata CSV is known), stops the server, and
prints how long each stage took.

Example:
    $ kmr-export demo
    $ KMR_DATA=../shared/data/movielens-latest-small/ratings.csv kmr-export demo --epochs 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from export.errors import UserError
from kmr import contract

DEFAULT_WORKDIR = Path(".cache") / "demo"
ENV_DATA = "KMR_DATA"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=os.environ.get(ENV_DATA),
        help=f"interactions CSV/TSV (default: ${ENV_DATA}, else synthetic data)",
    )
    parser.add_argument(
        "--items-csv",
        type=Path,
        help="item metadata CSV with titles (default: movies.csv beside --data)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where artifacts and the repository go (default {DEFAULT_WORKDIR})",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: train's default)")
    parser.add_argument("--dim", type=int, dest="embedding_dim", help="embedding width D")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user")
    parser.add_argument("--users", type=int, default=3, help="how many users to query")
    parser.add_argument("--seed", type=int, default=0)


class _Stages:
    """Times named stages and prints a summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            print(f"== {name}: {self.seconds[name]:.2f} s", flush=True)

    def summary(self) -> str:
        width = max(len(n) for n in self.seconds)
        lines = [f"  {n.ljust(width)}  {s:8.2f} s" for n, s in self.seconds.items()]
        lines.append(f"  {'total'.ljust(width)}  {sum(self.seconds.values()):8.2f} s")
        return "stage timings:\n" + "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from export.api import ExportOptions, export_model
    from export.cli.train import settings_from_args
    from export.triton.local_server import LocalTritonServer, TritonServerError
    from kmr.training.fit import train_recommender

    if args.users < 1:
        raise UserError(f"--users must be >= 1, got {args.users}.")
    settings = settings_from_args(args)  # --epochs, --dim, --k, --seed
    titles_path = args.items_csv or _sibling_titles(args.data)
    artifacts = args.workdir / "artifacts"
    repo = args.workdir / "model_repository"
    stages = _Stages()

    with stages.stage("train"):
        data = _load(args.data, args.seed)
        args.workdir.mkdir(parents=True, exist_ok=True)
        trained = train_recommender(data, settings, artifacts, verbose=1)

    with stages.stage("export"):
        if repo.exists():  # the demo's own repository: start clean each run
            shutil.rmtree(repo)
        result = export_model(
            artifacts / contract.MODEL_FILE,
            repo,
            ExportOptions(name="demo", graph="both", k=args.k, backend="python"),
            progress=lambda stage, s, msg: print(f"  {stage:<8} {s:6.2f} s  {msg}"),
        )
        names = {m.graph_kind: m.name for m in result.models}

    server = LocalTritonServer(repo)
    try:
        with stages.stage("serve"):
            server.start()
            server.wait_until_ready()
            print(f"  tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url}")
        with stages.stage("query"):
            _query(server.grpc_url, names, repo, data, args, titles_path)
    except TritonServerError as error:
        raise UserError(str(error)) from error
    finally:
        with stages.stage("stop"):
            server.stop()

    model_recall = trained.metrics["model"].recall
    popularity_recall = trained.metrics["popularity"].recall
    print(
        f"\nheld-out Recall@{args.k}: model {model_recall:.4f} vs popularity "
        f"{popularity_recall:.4f}"
    )
    print(f"artifacts: {artifacts}\nrepository: {repo}")
    print(stages.summary())
    return 0


def _query(url: str, names: dict[str, str], repo: Path, data, args: argparse.Namespace,
           titles_path: Path | None) -> None:
    """Asks the served retrieve model, then the rerank model, and prints both tables."""
    from client import RecommenderClient
    from client.cli import format_table, load_titles

    users = _demo_users(data, args.users)
    titles = load_titles(titles_path) if titles_path else {}
    with RecommenderClient(url, names[contract.GRAPH_RETRIEVE], vocabularies=repo) as client:
        seen = [
            data.item_vocab.to_raw(data.items[data.users == u]).tolist()
            for u in data.user_vocab.to_indices(users)
        ]
        recs = client.recommend(users, exclude=seen)
    print(
        f"Top-{args.k} unseen items for {len(users)} users "
        f"(full catalogue of {data.num_items} items, items they already rated excluded):"
    )
    print(format_table(recs, titles))
    with RecommenderClient(url, names[contract.GRAPH_RERANK], vocabularies=repo) as client:
        candidates = _candidates(recs)
        reranked = client.rerank(users[:1], [candidates[0]], k=min(5, args.k))
    print("\nRe-rank of the first user's list, reversed, through the rerank model:")
    print(format_table(reranked, titles))


def _load(data: str | None, seed: int):
    if data is None:
        from kmr.data.synthetic import make_synthetic

        return make_synthetic(seed=seed)
    from kmr.data.files import load_interactions

    return load_interactions(data)


def _sibling_titles(data: str | None) -> Path | None:
    if not data:
        return None
    candidate = Path(data).with_name("movies.csv")
    return candidate if candidate.is_file() else None


def _demo_users(data, count: int) -> list:
    """The ``count`` users with the most positives: their lists are the most telling."""
    busiest = np.argsort(-data.positives_per_user(), kind="stable")[:count]
    return data.user_vocab.to_raw(busiest).tolist()


def _candidates(recs) -> list[list]:
    return [[item for item in row if item is not None][::-1] for row in recs.item_ids.tolist()]
