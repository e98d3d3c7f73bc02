"""Reads an interactions file (CSV/TSV, MovieLens layouts included) into `Interactions`.

Both MovieLens layouts load with no options: ``ratings.csv`` (``userId,movieId,rating,
timestamp`` with a header) and ``u.data`` (tab-separated ``user item rating timestamp``,
no header). Separator, header and column names are detected and can all be set.

Rules (the why is in `load_interactions`): explicit ratings become positives when
``rating >= rating_threshold``; a file without a rating column makes every row a
positive; a (user, item) pair rated more than once counts once, its latest row decides.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.csv"
    >>> _ = path.write_text("userId,movieId,rating,timestamp\\n1,10,5,1\\n1,11,4,2\\n2,10,1,3\\n")
    >>> data = load_interactions(path)
    >>> len(data), data.user_vocab.ids, data.item_vocab.ids
    (2, (1,), (10, 11))
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmr.data.interactions import Interactions
from kmr.errors import DataError
from kmr.vocabulary import Vocabulary, canonical_int

DEFAULT_RATING_THRESHOLD = 4.0

# Separators tried in order on the first line; None means "runs of whitespace".
_SEPARATORS = ("\t", "::", ",", ";", "|")

# Header names recognised without being told, compared lower-case without punctuation.
_USER_NAMES = ("userid", "user", "uid", "customerid", "visitorid", "useridx")
_ITEM_NAMES = ("itemid", "item", "movieid", "iid", "productid", "bookid", "isbn", "trackid")
_RATING_NAMES = ("rating", "ratings", "score", "stars")
_TIMESTAMP_NAMES = ("timestamp", "time", "ts", "unixtime", "unixtimestamp")

# Integer ids: ASCII digits (as `kmr.vocabulary.Vocabulary.coerce` accepts) within int64.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class _Columns:
    """Field positions of each role; None for an absent optional column."""

    user: int
    item: int
    rating: int | None
    timestamp: int | None


def load_interactions(
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    header: bool | None = None,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    timestamp_col: str | int | None = None,
    rating_threshold: float = DEFAULT_RATING_THRESHOLD,
) -> Interactions:
    """Reads positives from a delimited text file.

    Ids are kept as ints when every id of a column is an int64 integer, else as strings. The
    vocabularies hold the users and items that have at least one positive (the model
    learns nothing about the others). Timestamps must be numbers (e.g. Unix seconds).

    Args:
        path: The CSV/TSV file.
        sep: Field separator; None detects one of tab, ``::``, comma, ``;``, ``|``,
            else whitespace, from the first line.
        header: Whether line 1 names the columns; None detects it (a known column
            name, or a non-number above a number).
        user_col: Column name (with a header) or 0-based position. Default: a known
            name such as ``userId``/``user_id``, else position 0.
        item_col: Same for items (``movieId``, ``item_id``, ...; else position 1).
        rating_col: Same for ratings (``rating``, ...; else position 2 when the file
            has 3+ columns). A file without one makes every row a positive.
        timestamp_col: Same for timestamps (``timestamp``, ...; else position 3).
        rating_threshold: Ratings ``>=`` this are positives; the rest are dropped.

    Returns:
        The positives, one row per distinct (user, item) pair.

    Raises:
        DataError: Missing or empty file, missing column, a short row, one field per
            row (an undetected separator), a non-numeric rating or timestamp (the
            message names the file and line), or no user with 2+ positives (nothing
            could be held out for evaluation).

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "u.data"
        >>> _ = path.write_text("1\\t10\\t5\\t100\\n1\\t11\\t3\\t101\\n1\\t12\\t4\\t102\\n")
        >>> data = load_interactions(path)
        >>> data.items.tolist(), data.timestamps.tolist()
        ([0, 1], [100.0, 102.0])
    """
    path = Path(path)
    _check_file(path)
    text_rows = list(_read_rows(path, sep if sep is not None else _detect_sep(path)))
    if not text_rows:
        raise DataError(f"{path}, line 1: the file is empty; expected interaction rows.")
    if header is None:
        header = _looks_like_header(text_rows, (user_col, item_col, rating_col, timestamp_col))
    names = text_rows[0][1] if header else None
    body = text_rows[1:] if header else text_rows
    if not body:
        raise DataError(f"{path}, line 1: only a header, no interaction rows.")
    columns = _resolve_columns(
        path, names, len(body[0][1]), body[0][0], user_col, item_col, rating_col,
        timestamp_col,
    )
    return _parse(path, body, columns, float(rating_threshold))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an interactions file.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}, line 1: the file is empty; expected interaction rows.")


def _open(path: Path):
    # utf-8-sig drops the byte-order mark spreadsheet programs put before the header.
    return open(path, encoding="utf-8-sig", newline="")


def _detect_sep(path: Path) -> str | None:
    try:
        with _open(path) as f:
            first = next((line for line in f if line.strip()), "")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error}).") from error
    return next((s for s in _SEPARATORS if s in first), None)


def _read_rows(path: Path, sep: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yields (1-based line number, stripped fields) of every non-blank line."""
    try:
        with _open(path) as f:
            if sep is not None and len(sep) == 1:
                reader = csv.reader(f, delimiter=sep)
                for fields in reader:
                    if any(field.strip() for field in fields):
                        yield reader.line_num, [field.strip() for field in fields]
            else:
                for line_no, line in enumerate(f, start=1):
                    if line.strip():
                        yield line_no, [field.strip() for field in line.split(sep)]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error}).") from error
    except csv.Error as error:
        raise DataError(f"{path}: cannot parse as delimited text ({error}).") from error


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _looks_like_header(
    rows: list[tuple[int, list[str]]], requested: tuple[str | int | None, ...]
) -> bool:
    first = rows[0][1]
    known = {*_USER_NAMES, *_ITEM_NAMES, *_RATING_NAMES, *_TIMESTAMP_NAMES}
    known |= {_normalise(str(c)) for c in requested if isinstance(c, str) and not c.isdigit()}
    if any(_normalise(field) in known for field in first):
        return True
    if len(rows) < 2:
        return False
    second = rows[1][1]
    # A word above a number in the same column is a column name (string ids are
    # words in both rows, so they never trigger this).
    return any(
        not _is_number(a) and _is_number(b) for a, b in zip(first, second, strict=False)
    )


def _resolve_columns(
    path: Path,
    names: list[str] | None,
    width: int,
    first_line: int,
    user_col: str | int | None,
    item_col: str | int | None,
    rating_col: str | int | None,
    timestamp_col: str | int | None,
) -> _Columns:
    def find(role: str, spec: str | int | None, defaults: tuple[str, ...], position: int | None):
        if spec is not None:
            return _position_of(path, names, width, role, spec)
        if names is not None:
            normalised = [_normalise(n) for n in names]
            for candidate in defaults:
                if candidate in normalised:
                    return normalised.index(candidate)
            if role in ("user", "item"):
                raise DataError(
                    f"{path}, line 1: no {role} column found among {names}; "
                    f"name it with --{role}-col."
                )
            return None
        return position if position is not None and position < width else None

    columns = _Columns(
        user=find("user", user_col, _USER_NAMES, 0),
        item=find("item", item_col, _ITEM_NAMES, 1),
        rating=find("rating", rating_col, _RATING_NAMES, 2),
        timestamp=find("timestamp", timestamp_col, _TIMESTAMP_NAMES, 3),
    )
    if columns.item is None:  # no header and a single field per row
        raise DataError(
            f"{path}, line {first_line}: rows have {width} field, expected at least a "
            "user and an item column; give the separator with --sep."
        )
    return columns


def _position_of(
    path: Path, names: list[str] | None, width: int, role: str, spec: str | int
) -> int:
    if names is not None and str(spec) in names:
        return names.index(str(spec))
    if isinstance(spec, int) or str(spec).isdigit():
        position = int(spec)
        if position < width:
            return position
        raise DataError(
            f"{path}, line 1: {role} column {position} requested, but rows have "
            f"{width} fields (positions 0..{width - 1})."
        )
    if names is None:
        raise DataError(
            f"{path}, line 1: no {role} column {spec!r}: the file has no header "
            "(give a 0-based position, or --header if line 1 names the columns)."
        )
    raise DataError(f"{path}, line 1: no {role} column {spec!r}; the columns are {names}.")


def _parse(
    path: Path, body: list[tuple[int, list[str]]], columns: _Columns, threshold: float
) -> Interactions:
    needed = max(c for c in (columns.user, columns.item, columns.rating, columns.timestamp)
                 if c is not None) + 1
    users_raw: list[str] = []
    items_raw: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    for line_no, fields in body:
        if len(fields) < needed:
            raise DataError(
                f"{path}, line {line_no}: expected at least {needed} fields, "
                f"found {len(fields)}: {fields!r}."
            )
        user, item = fields[columns.user], fields[columns.item]
        if not user or not item:
            raise DataError(f"{path}, line {line_no}: empty user or item id.")
        users_raw.append(user)
        items_raw.append(item)
        if columns.rating is not None:
            ratings.append(_number(path, line_no, "rating", fields[columns.rating]))
        if columns.timestamp is not None:
            times.append(_number(path, line_no, "timestamp", fields[columns.timestamp]))

    line_order = np.arange(len(users_raw))
    timestamps = np.asarray(times, np.float64) if columns.timestamp is not None else None
    user_codes, user_keys = _encode(users_raw)
    item_codes, item_keys = _encode(items_raw)
    keep = _latest_per_pair(user_codes, item_codes, timestamps, line_order)
    if columns.rating is not None:
        keep = keep[np.asarray(ratings, np.float64)[keep] >= threshold]
    keep.sort()  # back to file order
    _check_enough(path, user_codes[keep], columns.rating is not None, threshold)

    user_vocab, user_index = _vocabulary(user_keys, user_codes[keep], "user")
    item_vocab, item_index = _vocabulary(item_keys, item_codes[keep], "item")
    return Interactions(
        users=user_index,
        items=item_index,
        timestamps=None if timestamps is None else timestamps[keep],
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        source=str(path),
    )


def _number(path: Path, line_no: int, role: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {line_no}: {role} {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line_no}: {role} {text!r} is not a finite number.")
    return value


def _encode(raw: list[str]) -> tuple[np.ndarray, list[int] | list[str]]:
    """Returns (code per row, distinct ids in code order) with ints kept as ints.

    A column is int only when every id is the canonical text of an int64 (``str(int(v))
    == v``): ``"007"``, ``"+5"`` or a 20-digit order number keep the whole column as
    strings, so raw ids round-trip exactly (``"0439708184"`` and ``"439708184"`` stay
    two items).
    """
    ints = [canonical_int(v) for v in raw]
    if all(v is not None and _INT64_MIN <= v <= _INT64_MAX for v in ints):
        values = np.asarray(ints, dtype=object)
        distinct = sorted(set(ints))
    else:
        values = np.asarray(raw, dtype=object)
        distinct = sorted(set(raw))
    code_of = {key: code for code, key in enumerate(distinct)}
    codes = np.fromiter((code_of[v] for v in values), dtype=np.int64, count=len(values))
    return codes, distinct


def _latest_per_pair(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None, line: np.ndarray
) -> np.ndarray:
    """Row numbers of the last row of each (user, item) pair: latest time, then file order."""
    pair = users * (int(items.max()) + 1) + items
    time = timestamps if timestamps is not None else np.zeros(len(pair))
    order = np.lexsort((line, time, pair))
    sorted_pair = pair[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_pair[1:] != sorted_pair[:-1]
    return order[last]


def _check_enough(path: Path, users: np.ndarray, has_rating: bool, threshold: float) -> None:
    counts = np.bincount(users) if len(users) else np.zeros(0, np.int64)
    if not (counts >= 2).any():
        rule = f"rating >= {threshold:g}" if has_rating else "rows"
        raise DataError(
            f"{path}: fewer than 2 interactions for every user ({len(users)} positives "
            f"with {rule}); at least one user needs 2 so one can be held out for "
            "evaluation. Lower --rating-threshold or give more data."
        )


def _vocabulary(
    keys: list[int] | list[str], codes: np.ndarray, name: str
) -> tuple[Vocabulary, np.ndarray]:
    used, index = np.unique(codes, return_inverse=True)
    vocab = Vocabulary([keys[c] for c in used.tolist()], name=name)
    return vocab, index.astype(np.int64)
