"""Which id vocabularies an export publishes: the user's files, the ones saved next to the
model by ``train``, or identity vocabularies (ids are the dense indices the model was
trained with) for a model built and trained elsewhere.

Accepted files: our JSON format (`kmr.vocabulary.Vocabulary`), a text file with one raw id
per line (line ``i`` is the raw id of index ``i``), or a CSV/TSV file whose first column
holds the ids under a header row. Ids are ints only when every id is the canonical text
of an int64 (``"007"`` stays a string).

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "items.txt"
    ...     _ = path.write_text("0439708184\\n439708184\\n")
    ...     read_vocabulary(path, expected=2).ids
    ('0439708184', '439708184')
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError
from kmr import contract
from kmr.vocabulary import Vocabulary, canonical_int

_CHECK_MAX_BYTES = 16 << 20  # larger JSON vocabularies are copied without loading them
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class VocabularyPlan:
    """Where one published vocabulary comes from.

    Attributes:
        target: File name in the version folder (`kmr.contract.USER_VOCAB_FILE` ...).
        source: A JSON file to copy as is, or None when `vocabulary` is written.
        vocabulary: The vocabulary to write (identity, or read from a text/CSV file).
        origin: ``"file"``, ``"trained"`` or ``"identity"`` (recorded in the manifest).
        size: Rows of the model's table: every loaded vocabulary must have that many ids.
    """

    target: str
    source: Path | None
    vocabulary: Vocabulary | None
    origin: str
    size: int

    def load(self) -> Vocabulary:
        """The vocabulary itself; a copied JSON source is read (and size-checked) once."""
        if self.vocabulary is None:
            assert self.source is not None
            self.vocabulary = read_vocabulary(self.source, expected=self.size)
        return self.vocabulary

    def write(self, folder: Path) -> None:
        """Writes (or copies) the vocabulary into ``folder``."""
        import shutil

        if self.source is not None:
            shutil.copyfile(self.source, folder / self.target)
        else:
            assert self.vocabulary is not None
            self.vocabulary.save(folder / self.target)


def _canonical(values: list[str]) -> list[int] | list[str]:
    """Ints when every value is the canonical text of an int64, else the strings."""
    ints = [canonical_int(v) for v in values]
    if all(i is not None and _INT64[0] <= i <= _INT64[1] for i in ints):
        return ints
    return values


def read_vocabulary(path: Path, *, expected: int) -> Vocabulary:
    """Reads a JSON, text or CSV/TSV vocabulary and checks it has ``expected`` ids."""
    try:
        if path.suffix == ".json":
            vocabulary = Vocabulary.load(path)
        else:
            with open(path, encoding="utf-8", newline="") as f:
                if path.suffix in (".csv", ".tsv"):
                    rows = list(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
                    values = [row[0] if row else "" for row in rows[1:]]
                else:
                    values = f.read().splitlines()
            vocabulary = Vocabulary(_canonical(values))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ExportError(f"Bad vocabulary {str(path)!r}: {error}") from error
    if len(vocabulary) != expected:
        raise ExportError(f"Vocabulary {str(path)!r} has {len(vocabulary)} ids but the model "
                          f"has {expected} rows in that table.")
    return vocabulary


def plan_vocabularies(model_dir: Path | None, sizes: tuple[int, int],
                      files: tuple[str | os.PathLike[str] | None, ...]) -> list[VocabularyPlan]:
    """The user and item vocabularies to publish (given file > saved by train > identity).

    Args:
        model_dir: The folder of the ``.keras`` file (None for an in-memory model).
        sizes: ``(num_users, num_items)`` of the model.
        files: ``(user vocabulary file, item vocabulary file)``, each optional.
    """
    plans = []
    for target, size, given in zip((contract.USER_VOCAB_FILE, contract.ITEM_VOCAB_FILE),
                                   sizes, files, strict=True):
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise ExportError(f"Vocabulary file {str(path)!r} does not exist.")
            vocabulary = read_vocabulary(path, expected=size)
            plans.append(VocabularyPlan(target, None, vocabulary, "file", size))
            continue
        saved = model_dir / target if model_dir is not None else None
        if saved is not None and saved.is_file():
            plan = VocabularyPlan(target, saved, None, "trained", size)
            if saved.stat().st_size <= _CHECK_MAX_BYTES:
                plan.load()  # fail before any conversion; larger ones when they are needed
            plans.append(plan)
        else:
            plans.append(VocabularyPlan(target, None, Vocabulary(list(range(size))), "identity",
                                        size))
    return plans
