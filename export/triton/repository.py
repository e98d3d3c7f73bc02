"""Triton model repository layout and atomic publishing.

`model_paths` is the one place that decides where things go::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx            (+ model.onnx.data when external)
    <repo>/<name>/<version>/user_vocabulary.json, item_vocabulary.json
    <repo>/<name>/<version>/export_manifest.json  (+ model.py for the python backend)

Publishing never shows a partial folder. Files are written into a staging folder whose
name starts with ``.kmr-staging-``, then ``os.rename``d into place. The staging area is a
sibling of the repository, ``<repo parent>/.<repo name>.kmr-staging/``, so a server
polling the repository sees exactly one change per published model (a staging folder
inside it is itself a change); when the sibling is not writable or on another filesystem
(a repository that is a mount point), staging falls back to inside the repository:

* a new model: the whole model folder is staged and renamed to ``<repo>/<name>``;
* an existing model: the version is staged and renamed to ``<repo>/<name>/<version>``,
  then ``config.pbtxt`` is replaced via a temporary file and ``os.replace`` -- only if
  its text changes and that version is the newest (the one Triton serves by default).

A killed export leaves only a staging folder; the next export removes staging folders
whose owning process (its pid is in the name) is gone.

Example:
    >>> paths = model_paths("model_repository", "recommender", 3)
    >>> str(paths.version_dir), str(paths.config)
    ('model_repository/recommender/3', 'model_repository/recommender/config.pbtxt')
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kmr import contract

STAGING_PREFIX = ".kmr-staging-"
CONFIG_FILE = contract.TRITON_CONFIG_FILE
MANIFEST_FILE = "export_manifest.json"


class RepositoryError(Exception):
    """The repository cannot be written as asked (exists, not writable, bad version)."""


@dataclass(frozen=True)
class ModelPaths:
    """Where one model version lives in a repository.

    Attributes:
        repo: The repository root.
        model_dir: ``<repo>/<name>``.
        config: ``<repo>/<name>/config.pbtxt``.
        version_dir: ``<repo>/<name>/<version>``.
    """

    repo: Path
    model_dir: Path
    config: Path
    version_dir: Path


def model_paths(repo: str | os.PathLike[str], name: str, version: int) -> ModelPaths:
    """The one function that decides repository paths (see the module docstring)."""
    repo = Path(repo)
    model_dir = repo / name
    return ModelPaths(repo, model_dir, model_dir / CONFIG_FILE, model_dir / str(version))


def check_model_name(name: str) -> str:
    """Returns ``name`` if it is a usable model folder name, else raises RepositoryError."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name.isdigit():
        raise RepositoryError(
            f"Invalid model name {name!r}: expected a folder name that does not start with "
            "'.', contain '/' or consist only of digits."
        )
    return name


def existing_versions(repo: str | os.PathLike[str], name: str) -> list[int]:
    """Integer version folders of ``<repo>/<name>``, sorted (empty if none)."""
    model_dir = Path(repo) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")
    )


def next_version(repo: str | os.PathLike[str], name: str) -> int:
    """The version a new export gets: one more than the highest existing, or 1."""
    versions = existing_versions(repo, name)
    return versions[-1] + 1 if versions else 1


def check_writable(repo: str | os.PathLike[str]) -> Path:
    """Creates ``repo`` if needed and proves it is writable; raises RepositoryError if not."""
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
        probe = repo / f"{STAGING_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex}"
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise RepositoryError(
            f"Repository path {str(repo)!r} is not writable: {error.strerror or error}"
        ) from error
    return repo


def staging_area(repo: str | os.PathLike[str]) -> Path:
    """Where exports into ``repo`` stage: a sibling folder on the same filesystem, else ``repo``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     staging_area(Path(root) / "models").name
        '.models.kmr-staging'
    """
    repo = Path(repo)
    sibling = repo.resolve().parent / f".{repo.resolve().name}.kmr-staging"
    try:
        sibling.mkdir(exist_ok=True)
        repo.mkdir(parents=True, exist_ok=True)
        if sibling.stat().st_dev == repo.stat().st_dev:
            return sibling
    except OSError:
        pass
    return repo


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(repo: str | os.PathLike[str]) -> list[Path]:
    """Removes staging folders (repo level and model level) left by dead exports.

    Returns:
        The folders removed.
    """
    repo = Path(repo)
    if not repo.is_dir():
        return []
    area = staging_area(repo)
    candidates = list(repo.glob(f"{STAGING_PREFIX}*")) + list(repo.glob(f"*/{STAGING_PREFIX}*"))
    if area != repo:
        candidates += list(area.glob(f"{STAGING_PREFIX}*"))
    removed = []
    for path in candidates:
        parts = path.name[len(STAGING_PREFIX):].split("-")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue  # another export is running
        if pid == os.getpid():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class StagedVersion:
    """A version being written; `publish` makes it visible, `discard` removes it.

    Attributes:
        paths: The final paths.
        dir: The staging folder that will become ``paths.version_dir``: write files here.
        config_text: ``config.pbtxt`` content, set before `publish`.
    """

    def __init__(self, paths: ModelPaths, *, replace: bool) -> None:
        self.paths = paths
        self.replace = replace
        self.config_text: str | None = None
        tag = f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.new_model = not paths.model_dir.exists()
        area = staging_area(paths.repo)
        if self.new_model:
            self._root = area / tag  # becomes <repo>/<name>
            self.dir = self._root / paths.version_dir.name
        else:
            in_repo = area == paths.repo
            # becomes <repo>/<name>/<version>
            self._root = (paths.model_dir if in_repo else area) / tag
            self.dir = self._root
        self.dir.mkdir(parents=True)

    def publish(self) -> None:
        """Moves the staged version into place (rename), then the config (replace)."""
        if self.config_text is None:
            raise RepositoryError("No config.pbtxt was staged.")
        _fsync_tree(self._root)
        source = self._root
        if self.new_model:
            (self._root / CONFIG_FILE).write_text(self.config_text, encoding="utf-8")
            try:
                os.rename(self._root, self.paths.model_dir)
                return
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            # Another export created the model meanwhile: publish as a version of it.
            source = self.dir
        trash = None
        if self.paths.version_dir.exists():
            if not self.replace:
                raise RepositoryError(f"Version folder {self.paths.version_dir} already exists.")
            # No atomic swap of folders on POSIX: move the old one aside, then rename.
            old = f"{STAGING_PREFIX}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            trash = self._root.parent / old
            os.rename(self.paths.version_dir, trash)
        try:
            os.rename(source, self.paths.version_dir)
        except OSError:
            if trash is not None:  # put the previous version back
                os.rename(trash, self.paths.version_dir)
            raise
        # config.pbtxt describes the version Triton serves (the newest, by default): an
        # older version published later must not replace it.
        newest = existing_versions(self.paths.repo, self.paths.model_dir.name)[-1]
        config = self.paths.config
        current = config.read_text(encoding="utf-8") if config.exists() else None
        if current != self.config_text and (
                current is None or int(self.paths.version_dir.name) >= newest):
            # Written outside the model folder, then moved in: one change, never partial.
            tmp = self._root.parent / f"{STAGING_PREFIX}{os.getpid()}-{CONFIG_FILE}"
            tmp.write_text(self.config_text, encoding="utf-8")
            os.replace(tmp, config)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if source != self._root:
            shutil.rmtree(self._root, ignore_errors=True)

    def discard(self) -> None:
        """Removes the staging folder (after a failure)."""
        shutil.rmtree(self._root, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
