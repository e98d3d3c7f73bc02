"""Finding and loading the user and item vocabularies published next to a model.

The export writes ``user_vocabulary.json`` and ``item_vocabulary.json`` into the
model's version folder ``<repository>/<model>/<version>/``: each version has its own
(a retrain may map raw ids to other dense indices). `load_vocabularies` accepts that
folder, the model folder, or the repository root (plus the model name) and then picks
the requested version or, by default, the highest one. `VersionedVocabularies` is what
the clients use: the vocabularies of whichever version answered, loaded on demand.

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
import threading
from dataclasses import dataclass
from pathlib import Path

from client.errors import InvalidRequestError, ModelContractError
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


class VersionedVocabularies:
    """The vocabularies of every version of one model, as the clients use them.

    Built from a folder (a repository root plus the model name, a model folder, or a
    numbered version folder, whose parent is then the model folder), it loads
    ``<model folder>/<version>/`` the first time `get` asks for that version and keeps
    it. Built from a `Vocabularies` (or a folder that is not a numbered version), it has
    no version of its own: it belongs to the first version `get` is asked for, and
    refuses any other.

    Args:
        source: A `Vocabularies` or a folder.
        model_name: The model's folder name inside a repository root.
        model_version: The version the client is pinned to ('' for the server's choice).
        user_file: User vocabulary file name (the config's ``user_vocabulary``).
        item_file: Item vocabulary file name (the config's ``item_vocabulary``).

    Raises:
        InvalidRequestError: ``source`` is a folder without vocabulary files (for the
            pinned version, if any).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for version, items in ((1, [10, 20]), (2, [10, 15, 20])):
        ...     folder = root / "mf" / str(version)
        ...     folder.mkdir(parents=True)
        ...     Vocabulary.from_ids(["u"]).save(folder / "user_vocabulary.json")
        ...     Vocabulary.from_ids(items).save(folder / "item_vocabulary.json")
        >>> book = VersionedVocabularies(root, "mf")
        >>> book.initial_version, len(book.get("1").items), len(book.get("2").items)
        ('2', 2, 3)
    """

    def __init__(
        self,
        source: Vocabularies | str | os.PathLike[str],
        model_name: str | None = None,
        *,
        model_version: str = "",
        user_file: str = contract.USER_VOCAB_FILE,
        item_file: str = contract.ITEM_VOCAB_FILE,
    ) -> None:
        self._files = (user_file, item_file)
        self._lock = threading.Lock()
        self._cache: dict[str, Vocabularies] = {}
        self.model_folder: Path | None = None
        self._fixed: Vocabularies | None = None
        self._fixed_version: str | None = None
        self.initial_version: str | None = None
        if isinstance(source, Vocabularies):
            self._fixed = source
            self.initial_version = model_version or None
            self._fixed_version = self.initial_version
            return
        folder = find_version_folder(source, model_name, model_version=model_version,
                                     user_file=user_file)
        vocabularies = self._load(folder)
        if folder.name.isascii() and folder.name.isdigit():
            self.model_folder = folder.parent
            self.initial_version = str(int(folder.name))
            self._cache[self.initial_version] = vocabularies
        else:  # a loose folder: no version to tell, like a Vocabularies object
            self._fixed = vocabularies
            self.initial_version = model_version or None
            self._fixed_version = self.initial_version

    @property
    def versioned(self) -> bool:
        """True when each version's own vocabularies can be loaded (built from a folder)."""
        return self.model_folder is not None

    def initial(self) -> Vocabularies:
        """The vocabularies to use before any answer told which version serves."""
        if self._fixed is not None:
            return self._fixed
        assert self.initial_version is not None
        return self._cache[self.initial_version]

    def get(self, version: str) -> Vocabularies:
        """The vocabularies of ``version``.

        Raises:
            ModelContractError: they cannot be had: not under the model folder, or the
                vocabularies were given without a version and belong to another one.
        """
        with self._lock:
            if self._fixed is not None:
                if self._fixed_version is None:
                    self._fixed_version = version
                if self._fixed_version != version:
                    raise ModelContractError(
                        f"Version {version} of the model answered, but the vocabularies "
                        f"given to the client belong to version {self._fixed_version} (the "
                        "first that answered): decoding with them would give wrong ids. "
                        "Pass the repository folder as `vocabularies=` (each version's own "
                        "are then loaded) or pin `model_version`."
                    )
                return self._fixed
            if version not in self._cache:
                assert self.model_folder is not None
                folder = self.model_folder / version
                if not (folder / self._files[0]).is_file():
                    raise ModelContractError(
                        f"Version {version} of the model answered, but its vocabularies are "
                        f"not in {str(folder)!r}: the client never decodes an answer with "
                        "another version's vocabularies. Make that folder reachable, or pin "
                        "`model_version`."
                    )
                self._cache[version] = self._load(folder)
            return self._cache[version]

    def _load(self, folder: Path) -> Vocabularies:
        user_file, item_file = self._files
        try:
            return Vocabularies(
                users=Vocabulary.load(folder / user_file, name="user id"),
                items=Vocabulary.load(folder / item_file, name="item id"),
            )
        except (OSError, ValueError) as error:
            raise InvalidRequestError(
                f"Cannot load vocabularies from {folder}: {error}") from error
