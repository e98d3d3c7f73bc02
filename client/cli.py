"""The ``query`` command: ask a served model for recommendations and print a table.

Registered as ``kmr-export query``; ``python -m client`` runs it on its own.

Example:
    $ python -m client --url 127.0.0.1:8001 --model movielens_retrieve \\
          --items-csv movies.csv --user 1 --user 7 --k 5     # a raw-id model: no files
    $ python -m client --model mf_index_retrieve --vocab-dir model_repository --user u1
    $ python -m client --model mf_rerank --user 0 --candidates 3,8,1 --k 2
    $ python -m client --url triton.example.com:443 --ssl --root-certificates ca.pem \\
          --header "authorization=Bearer $TOKEN" --model mf_retrieve --user 0
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from client._codec import Recommendations
from client._transport import PROTOCOLS
from client.errors import RecommenderError
from client.recommender_client import RecommenderClient
from kmr import contract

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``query`` options to ``parser``."""
    parser.add_argument("--url", help="server host:port (default 127.0.0.1:8001 for grpc, "
                        ":8000 for http)")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument("--model-version", default="", help="version (default: server's)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--user", action="append", required=True, metavar="ID",
                        help="user id (repeat for several users)")
    parser.add_argument("--candidates", action="append", metavar="ID,ID,...",
                        help="rerank models: comma-separated candidate item ids, once for "
                        "all users or once per --user")
    parser.add_argument("--exclude", metavar="ID,ID,...",
                        help="retrieve models: comma-separated item ids to skip (all users)")
    parser.add_argument("--k", type=int, help="results per user (default: the model's k)")
    parser.add_argument("--nprobe", type=int, help="IVF retrieve models: lists to probe "
                        "(default: the value chosen at export)")
    parser.add_argument("--rescore", type=int, help="int8 retrieve models: re-score the best "
                        "k x RESCORE candidates in float32 (default: the value chosen at export)")
    parser.add_argument("--vocab-dir", type=Path, help="folder with the vocabularies (version "
                        "folder, model folder or repository root): raw ids for a dense-index "
                        "model (without it its ids are dense indices); for a raw-id model, "
                        "unknown ids are then refused before sending")
    parser.add_argument("--items-csv", type=Path, help="item metadata CSV (first column item "
                        "id, a 'title' column), e.g. MovieLens movies.csv")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    tls = parser.add_argument_group("TLS and authentication (as RecommenderClient's options)")
    tls.add_argument("--ssl", action="store_true", help="connect with TLS (an https:// url "
                     "implies it); the server certificate and host name are verified")
    tls.add_argument("--root-certificates", type=Path, metavar="PEM",
                     help="CA bundle that signed the server's certificate (default: the "
                     "system's CAs)")
    tls.add_argument("--private-key", type=Path, metavar="PEM",
                     help="the client's private key, for mutual TLS (with --certificate-chain)")
    tls.add_argument("--certificate-chain", type=Path, metavar="PEM",
                     help="the client's certificate chain, for mutual TLS (with --private-key)")
    tls.add_argument("--header", action="append", type=_header, metavar="KEY=VALUE",
                     help="header (gRPC metadata) sent with every request, e.g. "
                     "'authorization=Bearer TOKEN'; repeat for several")


def run(args: argparse.Namespace) -> int:
    """Runs the query; prints the table to stdout, errors to stderr. Returns the exit code."""
    try:
        titles = load_titles(args.items_csv) if args.items_csv else {}
        with RecommenderClient(
            args.url or DEFAULT_URLS[args.protocol],
            args.model,
            protocol=args.protocol,
            model_version=args.model_version,
            timeout=args.timeout,
            vocabularies=args.vocab_dir,
            ssl=args.ssl,
            root_certificates=args.root_certificates,
            private_key=args.private_key,
            certificate_chain=args.certificate_chain,
            headers=_headers(args.header or []),
        ) as client:
            # A raw-id model takes the ids as typed; a dense-index one needs --vocab-dir.
            raw_ids = args.vocab_dir is not None or client.model_info.raw_ids
            users = [_id(u, raw_ids, "--user") for u in args.user]
            if client.model_info.graph_kind == contract.GRAPH_RERANK:
                if not args.candidates:
                    raise RecommenderError(f"Model {args.model!r} reranks: pass --candidates.")
                if args.exclude or args.nprobe is not None or args.rescore is not None:
                    raise RecommenderError(
                        f"Model {args.model!r} reranks the given --candidates: --exclude, "
                        "--nprobe and --rescore are for retrieve models."
                    )
                lists = [_ids(c, raw_ids, "--candidates") for c in args.candidates]
                if len(lists) == 1:
                    lists = lists * len(users)
                result = client.rerank(users, lists, k=args.k, raw_ids=raw_ids)
            else:
                if args.candidates:
                    raise RecommenderError(
                        f"Model {args.model!r} retrieves from the whole catalogue: "
                        "--candidates is for rerank models."
                    )
                exclude = None
                if args.exclude:
                    exclude = [_ids(args.exclude, raw_ids, "--exclude")] * len(users)
                result = client.recommend(users, k=args.k, exclude=exclude, raw_ids=raw_ids,
                                          nprobe=args.nprobe, rescore=args.rescore)
    except (RecommenderError, OSError, ValueError, csv.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(result, titles))
    return 0


def load_titles(path: Path) -> dict[str, str]:
    """Reads item id -> title from a CSV (first column id; 'title' column, else the second).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "movies.csv"
        >>> _ = f.write_text("movieId,title,genres\\n1,Toy Story (1995),Animation\\n")
        >>> load_titles(f)
        {'1': 'Toy Story (1995)'}
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or len(header) < 2:
            raise ValueError(f"{path}: expected a header with an id and a title column.")
        lowered = [h.strip().lower() for h in header]
        column = lowered.index("title") if "title" in lowered else 1
        return {row[0].strip(): row[column] for row in rows if len(row) > column}


def format_table(result: Recommendations, titles: dict[str, str] | None = None) -> str:
    """Formats results as an aligned table: user, rank, item, title, score.

    The title column is left out when no ``titles`` are given.

    Example:
        >>> r = Recommendations(user_ids=np.array(["u"]), item_ids=np.array([[7, -1]]),
        ...     scores=np.array([[0.5, -np.inf]], dtype=np.float32),
        ...     item_indices=np.array([[7, -1]]))
        >>> print(format_table(r, {"7": "Seven"}))
        user  rank  item  title  score
        u     1     7     Seven  0.5000
        >>> print(format_table(r))
        user  rank  item  score
        u     1     7     0.5000
    """
    rows = [("user", "rank", "item", "title", "score")]
    for b, user in enumerate(result.user_ids.tolist()):
        for rank in np.flatnonzero(result.valid[b]).tolist():
            item = result.item_ids[b, rank]
            item = item.item() if isinstance(item, np.generic) else item
            rows.append((str(user), str(rank + 1), str(item),
                         titles.get(str(item), "") if titles else "",
                         f"{float(result.scores[b, rank]):.4f}"))
    if not titles:
        rows = [(user, rank, item, score) for user, rank, item, _, score in rows]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def _id(text: str, raw_ids: bool, flag: str) -> str | int:
    if raw_ids:
        return text.strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{flag} {text!r}: without --vocab-dir ids of a dense-index model are dense "
            "integer indices."
        ) from None


def _ids(text: str, raw_ids: bool, flag: str) -> list[str | int]:
    return [_id(part, raw_ids, flag) for part in text.split(",") if part.strip()]


def _header(text: str) -> tuple[str, str]:
    """argparse type of ``--header``: ``KEY=VALUE`` -> (KEY, VALUE); the value may hold '='."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE. Received: {text!r}")
    return key.strip(), value


def _headers(pairs: Sequence[tuple[str, str]]) -> dict[str, str] | None:
    """The ``--header`` pairs as the client's ``headers=``; a name given twice is an error."""
    headers: dict[str, str] = {}
    for key, value in pairs:
        if key.lower() in (k.lower() for k in headers):
            raise ValueError(f"--header {key!r} is given twice (names are case-insensitive).")
        headers[key] = value
    return headers or None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m client``."""
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Ask a served kmr model for recommendations."
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
