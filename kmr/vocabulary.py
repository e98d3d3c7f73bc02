"""Raw id <-> dense index mapping, saved with a model and published next to it.

Pure Python + numpy (no Keras): training writes it, export publishes it, the client
reads it. Raw ids are all ints or all strings; the file keeps which.

File format (JSON): ``{"format": "kmr-vocabulary/1", "kind": "int"|"str", "ids": [...]}``
where ``ids[i]`` is the raw id of dense index ``i``.

Example:
    >>> vocab = Vocabulary.from_ids(["b", "a", "b"])
    >>> vocab.ids, len(vocab)
    (('a', 'b'), 2)
    >>> vocab.to_indices(["b", "a"]).tolist(), vocab.to_raw([0]).tolist()
    ([1, 0], ['a'])
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

FORMAT = "kmr-vocabulary/1"
_INT_TEXT = re.compile(r"[+-]?[0-9]+")  # ASCII decimal digits only


def canonical_int(text: str) -> int | None:
    """The int whose canonical text is ``text`` (``str(int(text)) == text``), else None.

    The one rule for "is this raw id an int": ASCII digits only, no sign but ``-``, no
    leading zeros, no spaces. Range (int64) is the caller's check.

    Example:
        >>> canonical_int("-7"), canonical_int("007"), canonical_int("+7"), canonical_int(" 7")
        (-7, None, None, None)
    """
    if not _INT_TEXT.fullmatch(text):
        return None
    value = int(text)
    return value if str(value) == text else None


class UnknownIdError(KeyError):
    """A raw id is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Vocabulary:
    """An ordered, immutable set of raw ids; position = dense index."""

    def __init__(self, ids: Sequence[int | str], name: str = "id") -> None:
        kinds = {type(i) for i in ids}
        if kinds - {int, str}:
            bad = next(i for i in ids if not isinstance(i, (int, str)))
            raise TypeError(f"Vocabulary ids must be int or str. Received: {bad!r}")
        if len(kinds) > 1:
            raise TypeError("Vocabulary ids must be all int or all str, not a mix.")
        self.ids: tuple[int | str, ...] = tuple(ids)
        self.kind = "str" if kinds == {str} else "int"
        self.name = name
        self._index = {raw: i for i, raw in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError(f"Vocabulary {name!r} has duplicate ids.")

    @classmethod
    def from_ids(cls, raw_ids: Iterable[int | str], name: str = "id") -> Vocabulary:
        """Builds a vocabulary of the distinct ids, sorted (deterministic)."""
        distinct = {i.item() if isinstance(i, np.generic) else i for i in raw_ids}
        return cls(sorted(distinct), name=name)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return raw in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.ids == other.ids

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, kind={self.kind!r}, size={len(self)})"

    def coerce(self, raw: object) -> int | str:
        """Converts a raw id to this vocabulary's kind.

        Int vocabularies accept ints (numpy ones too) and the canonical text of an int
        (``"42"``; ``"007"`` is not an int id: raw ids round-trip exactly); str
        vocabularies take the text of any id (``7`` -> ``"7"``, never ``"007"``).

        Raises:
            UnknownIdError: an int vocabulary received something that is not an integer.
        """
        if isinstance(raw, np.generic):
            raw = raw.item()
        if self.kind == "int":
            if isinstance(raw, bool):
                raise UnknownIdError(f"Unknown {self.name} {raw!r}: expected an integer id.")
            if isinstance(raw, int):
                return raw
            if isinstance(raw, str) and (value := canonical_int(raw)) is not None:
                return value
            raise UnknownIdError(f"Unknown {self.name} {raw!r}: expected an integer id.")
        return str(raw)

    def to_indices(self, raw_ids: Iterable[object]) -> np.ndarray:
        """Maps raw ids to int64 dense indices; raises UnknownIdError naming the first unknown."""
        out = []
        for raw in raw_ids:
            index = self._index.get(self.coerce(raw))
            if index is None:
                raise UnknownIdError(
                    f"Unknown {self.name} {raw!r}: not in the vocabulary of {len(self)} ids."
                )
            out.append(index)
        return np.asarray(out, dtype=np.int64)

    def to_raw(self, indices: Iterable[int]) -> np.ndarray:
        """Maps dense indices back to raw ids; -1 (no item) maps to None."""
        dtype = object if self.kind == "str" else np.int64
        values = [None if int(i) < 0 else self.ids[int(i)] for i in indices]
        if any(v is None for v in values):
            return np.asarray(values, dtype=object)
        return np.asarray(values, dtype=dtype)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the JSON file (via a temporary file and rename: never half-written)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "kind": self.kind, "ids": list(self.ids)}, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], name: str = "id") -> Vocabulary:
        """Reads a file written by `save`; raises ValueError for anything else."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a vocabulary file ({error})") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a vocabulary file (expected format {FORMAT!r})")
        return cls(data["ids"], name=name)
