"""Finding and loading the user and item vocabularies published next to a model.

The export writes ``user_vocabulary.json`` and ``item_vocabulary.json`` into the
model's version folder ``<repository>/<model>/<version>/``. `load_vocabularies`
accepts that folder, the model folder, or the repository root (plus the model name)
and then picks the requested version or, by default, the highest one.

Example:
    >>> import tempfile, pathlib
    >>> from kmr.vocabulary import Vocabulary
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "mf" / "2").mkdir(parents=True)
    >>> Vocabulary.from_ids(["u1", "u2"]).save(root / "mf" / "2" / "user_vocabulary.json")
    >>> Vocabulary.from_ids([10, 20, 30]).save(root / "mf" / "2" / "item_vocabulary.json")
    >>> vocabs = load_vocabularies(root, "mf")
    >>> len(vocabs.users), len(vocabs.items)
    (2, 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from client.errors import InvalidRequestError
from kmr import contract
from kmr.vocabulary import Vocabulary


@dataclass(frozen=True)
class Vocabularies:
    """The raw-id vocabularies of one model: dense index ``i`` is ``users.ids[i]``."""

    users: Vocabulary
    items: Vocabulary


def find_version_folder(
    path: str | os.PathLike[str],
    model_name: str | None = None,
    *,
    model_version: str = "",
    user_file: str = contract.USER_VOCAB_FILE,
) -> Path:
    """Returns the folder holding the vocabulary files.

    Args:
        path: A version folder, a model folder, or a repository root.
        model_name: The model's folder name inside a repository root.
        model_version: A version folder name; empty means the highest numeric version.
        user_file: The user vocabulary file name used to recognise a version folder.

    Raises:
        InvalidRequestError: nothing under ``path`` holds the vocabulary files.
    """
    path = Path(path)
    if (path / user_file).is_file():
        return path
    candidates = [path]
    if model_name:
        candidates.insert(0, path / model_name)
    for model_dir in candidates:
        if not model_dir.is_dir():
            continue
        versions = sorted(
            (int(p.name) for p in model_dir.iterdir()
             if p.name.isascii() and p.name.isdigit() and p.is_dir()),
            reverse=True,
        )
        if model_version:
            versions = [int(model_version)] if int(model_version) in versions else []
        for version in versions:
            folder = model_dir / str(version)
            if (folder / user_file).is_file():
                return folder
    version_text = f" version {model_version}" if model_version else ""
    raise InvalidRequestError(
        f"No vocabulary files ({user_file!r}) found for model {model_name!r}{version_text} "
        f"under {str(path)!r}. Expected a version folder, a model folder, or a repository "
        "root containing <model>/<version>/."
    )


def load_vocabularies(
    path: str | os.PathLike[str],
    model_name: str | None = None,
    *,
    model_version: str = "",
    user_file: str = contract.USER_VOCAB_FILE,
    item_file: str = contract.ITEM_VOCAB_FILE,
) -> Vocabularies:
    """Loads both vocabularies from the folder `find_version_folder` picks.

    Raises:
        InvalidRequestError: the files are missing or are not vocabulary files.
    """
    folder = find_version_folder(
        path, model_name, model_version=model_version, user_file=user_file
    )
    try:
        return Vocabularies(
            users=Vocabulary.load(folder / user_file, name="user id"),
            items=Vocabulary.load(folder / item_file, name="item id"),
        )
    except (OSError, ValueError) as error:
        raise InvalidRequestError(f"Cannot load vocabularies from {folder}: {error}") from error
