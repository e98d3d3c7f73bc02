"""The export job: trained ``model.keras`` -> checked ONNX graphs -> Triton repository.

Stages (each reported to ``progress`` with its duration): load, convert, check (ONNX
checker + onnxruntime load), verify parity (against the trained model), publish.

The trained model is never materialised: "load" validates the archive's config.json
(exactly a kmr recommender, no code run, Keras safe-mode deserialisation of a shrunk
copy) and opens its weights file; the tables are then streamed in row chunks from the
archive into the ONNX external data and into the parity references
(`export.archive`). Peak memory is about the import of TF plus one table's pages
touched by onnxruntime during the full-catalogue parity run.
Nothing becomes visible in the repository unless every graph of the export passed every
stage; with ``graph="both"`` both models are staged first and published last.

Model naming: ``graph="rerank"`` or ``"retrieve"`` publishes one model called ``name``;
``graph="both"`` publishes ``<name>_rerank`` and ``<name>_retrieve``.

Example:
    >>> options = ExportOptions(name="recommender", graph="both", k=10)
    >>> result = export_model("artifacts/model.keras", "model_repository",
    ...                       options)  # doctest: +SKIP
    >>> [(m.name, m.version) for m in result.models]  # doctest: +SKIP
    [('recommender_rerank', 1), ('recommender_retrieve', 1)]
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.triton.repository import (
    MANIFEST_FILE,
    RepositoryError,
    StagedVersion,
    check_model_name,
    check_writable,
    clean_stale_staging,
    existing_versions,
    model_paths,
    next_version,
)
from kmr import contract

GRAPH_BOTH = "both"
GRAPH_CHOICES = (*contract.GRAPH_KINDS, GRAPH_BOTH)
BACKEND_ONNXRUNTIME = "onnxruntime"
BACKEND_PYTHON = "python"
BACKENDS = (BACKEND_ONNXRUNTIME, BACKEND_PYTHON)
IDS_RAW, IDS_INDEX = "raw", "index"
ID_MODES = (IDS_RAW, IDS_INDEX)
PYTHON_BACKEND_FILE = Path(__file__).parent / "triton" / "python_backend" / "model.py"

Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class PublishedModel:
    """One model version written by an export.

    Attributes:
        name: Model name in the repository.
        graph_kind: ``"rerank"`` or ``"retrieve"``.
        version: Integer version.
        version_dir: The published version folder.
        external_data: Whether the weights are in ``model.onnx.data``.
        parity: The parity figures (see `export.parity.ParityReport`).
        index: The retrieval index facts (``{"index": "exact"}``, or the facts of
            `export.onnx.index_convert.IndexBuild`).
    """

    name: str
    graph_kind: str
    version: int
    version_dir: Path
    external_data: bool
    parity: dict[str, Any]
    index: dict[str, Any] = field(default_factory=lambda: {"index": contract.INDEX_EXACT})


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` published and how long each stage took (seconds)."""

    models: tuple[PublishedModel, ...]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportOptions:
    """How to export: which graphs, their k, the backend and Triton serving settings.

    Attributes:
        name: Model name (``graph="both"`` appends ``_rerank`` / ``_retrieve``).
        graph: ``"rerank"``, ``"retrieve"`` or ``"both"``.
        k: Results per request, a constant of the model (``1 <= k <= num_items``).
        backend: ``"onnxruntime"`` (production) or ``"python"`` (local server).
        version: Version to write; default one more than the highest existing.
        force: Replace an existing ``version``.
        max_batch_size: Triton ``max_batch_size``.
        max_queue_delay_us: Dynamic batching queue delay.
        instances: CPU instance count.
        external_data_threshold_mb: Tables above this many MB (total) are stored as
            external data; 0 forces external data. Default 64.
        user_vocabulary: A vocabulary file for the user ids (JSON, text or CSV; see
            `export.vocabularies`). Default: the one ``train`` saved next to the model,
            else identity (ids are the dense indices the model was trained with).
        item_vocabulary: The same for the item ids.
        ids: ``"raw"`` (default): the vocabularies are baked into the served graph, which
            takes and returns the raw ids (INT64 when every id is a canonical int, else
            BYTES); ``"index"``: dense indices, for callers that map ids themselves.
        id_lookup: How a raw-id graph maps ids that are not ``a, a+1, ...`` (those need
            no table): ``"fast"``: ``ai.onnx.ml.LabelEncoder`` (~80 bytes per id in
            onnxruntime); ``"compact"``: int ids only, a minimal perfect hash
            (`export.onnx.compact_ids`, ~10 bytes per id, ~3.5 us more per id input at
            small batches, ~2.6x the LabelEncoder's time per id at large ones);
            ``"auto"`` (default): compact for the retrieve graph (its scoring takes
            milliseconds), fast for the rerank graph. A vocabulary the compact lookup
            cannot place, and string ids under ``auto``, get the fast one.
        index: Retrieval index of the retrieve graph: ``"exact"`` (default, every item
            scored), ``"ivf"`` (approximate: items clustered by k-means at export, a
            request scores the items of its ``nprobe`` best lists; `export.onnx.ivf`) or
            ``"int8"`` (exact top-k, faster: an int8 scoring pass, then the best
            ``k * rescore`` candidates re-scored in float32; `export.onnx.int8`).
        nlist: IVF only: k-means clusters (default about 4 sqrt(num_items)).
        nprobe: IVF only: the default lists per row (a request may ask for others);
            default the smallest reaching ``target_recall`` on sampled users.
        target_recall: IVF only: recall@k against exact the default nprobe must reach
            on 256 sampled users (default 0.95).
        rescore: int8 only: the default re-score depth (a request may ask for others);
            default twice the smallest depth exact on 256 sampled users.

    Example:
        >>> ExportOptions(graph="both", k=20).model_names()
        [('recommender_rerank', 'rerank'), ('recommender_retrieve', 'retrieve')]
        >>> ExportOptions(k=0).validate()
        Traceback (most recent call last):
        export.errors.ExportError: Invalid k=0: expected a positive int.
    """

    name: str = "recommender"
    graph: str = contract.GRAPH_RERANK
    k: int = 10
    backend: str = BACKEND_ONNXRUNTIME
    version: int | None = None
    force: bool = False
    max_batch_size: int = 64
    max_queue_delay_us: int = 100
    instances: int = 1
    external_data_threshold_mb: float | None = None
    user_vocabulary: str | os.PathLike[str] | None = None
    item_vocabulary: str | os.PathLike[str] | None = None
    ids: str = IDS_RAW
    id_lookup: str = "auto"
    index: str = contract.INDEX_EXACT
    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = 0.95
    rescore: int | None = None

    def validate(self) -> None:
        """Raises ExportError naming the first bad option and what is allowed."""
        if self.graph not in GRAPH_CHOICES:
            raise ExportError(f"Unknown graph {self.graph!r}: expected one of {GRAPH_CHOICES}.")
        if self.backend not in BACKENDS:
            raise ExportError(f"Unknown backend {self.backend!r}: expected one of {BACKENDS}.")
        if self.ids not in ID_MODES:
            raise ExportError(f"Unknown ids mode {self.ids!r}: expected one of {ID_MODES}.")
        from export.onnx.id_lookup import MODES

        if self.id_lookup not in MODES:
            raise ExportError(
                f"Unknown id lookup {self.id_lookup!r}: expected one of {MODES}.")
        if not _positive_int(self.k):
            raise ExportError(f"Invalid k={self.k!r}: expected a positive int.")
        if self.version is not None and not _positive_int(self.version):
            raise ExportError(f"Invalid version={self.version!r}: expected a positive int.")
        self._validate_index()
        mb = self.external_data_threshold_mb
        if mb is not None and not 0 <= mb <= 1024:
            raise ExportError(
                f"Invalid external data threshold {mb!r} MB: expected 0..1024 "
                "(a protobuf file is limited to 2 GB)."
            )

    def _validate_index(self) -> None:
        if self.index not in contract.INDEXES:
            raise ExportError(
                f"Unknown index {self.index!r}: expected one of {contract.INDEXES}.")
        allowed = {contract.INDEX_EXACT: (), contract.INDEX_IVF: ("nlist", "nprobe"),
                   contract.INDEX_INT8: ("rescore",)}[self.index]
        given = [f"{n}={getattr(self, n)!r}" for n in ("nlist", "nprobe", "rescore")
                 if getattr(self, n) is not None and n not in allowed]
        if given:
            raise ExportError(f"{', '.join(given)} do not apply to index={self.index!r} "
                              "(nlist, nprobe: --index ivf; rescore: --index int8).")
        if self.index == contract.INDEX_EXACT:
            return
        if self.graph == contract.GRAPH_RERANK:
            raise ExportError(f"index={self.index!r} is an index of the retrieve graph; the "
                              "rerank graph scores only its candidates. Export "
                              "graph='retrieve' or 'both'.")
        problems = self.index_settings().problems()
        if problems:
            raise ExportError("Invalid index settings: " + "; ".join(problems) + ".")

    def index_settings(self) -> Any:
        """The `export.onnx.index_convert.IndexSettings` of these options."""
        from export.onnx.ivf_index import IndexSettings

        return IndexSettings(nlist=self.nlist, nprobe=self.nprobe,
                           target_recall=self.target_recall, rescore=self.rescore)

    def index_of(self, kind: str) -> str:
        """The retrieval index of the ``kind`` graph (the rerank graph is always exact)."""
        return self.index if kind == contract.GRAPH_RETRIEVE else contract.INDEX_EXACT

    def model_names(self) -> list[tuple[str, str]]:
        """``(model name, graph kind)`` of every model this export publishes."""
        if self.graph == GRAPH_BOTH:
            return [(f"{self.name}_{kind}", kind) for kind in contract.GRAPH_KINDS]
        return [(self.name, self.graph)]

    def external_threshold_bytes(self) -> int:
        """The external-data threshold in bytes (default 64 MB)."""
        mb = 64 if self.external_data_threshold_mb is None else self.external_data_threshold_mb
        return int(mb * (1 << 20))

    def serving(self) -> dict[str, int]:
        """The Triton serving settings, as `export.triton.config` takes them."""
        return dict(max_batch_size=self.max_batch_size,
                    max_queue_delay_us=self.max_queue_delay_us,
                    instance_count=self.instances)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class _Job:
    """One export in flight: its inputs, options, and the timings gathered so far."""

    archive: Any
    model_path: Path
    model_dir: Path | None  # where train's vocabularies may be; None: in-memory model
    repo: Path
    options: ExportOptions
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)
    vocabularies: list[Any] = field(default_factory=list)  # export.vocabularies plans
    id_maps: tuple[Any, Any] | None = None  # (users, items) baked into raw-id graphs
    id_kind: str = contract.IDS_INDEX
    lookups: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> id_lookup names

    def report(self, stage: str, key: str, started: float, message: str) -> None:
        self.timings[key] = time.perf_counter() - started
        self.progress(stage, self.timings[key], message)


def _noop(stage: str, seconds: float, message: str) -> None:
    pass


def open_trained_archive(model_path: str | os.PathLike[str]) -> Any:
    """Opens a trained ``.keras`` without loading the model; ExportError with the reason if not.

    The archive's ``config.json`` must be exactly a kmr recommender (no code runs; a
    ``Lambda`` or unknown class is refused) and its weights must match the config; see
    `export.archive`. Returns the open `export.archive.KerasArchive`.
    """
    from export.archive import ArchiveError, open_archive

    path = Path(model_path)
    if not path.is_file():
        raise ExportError(f"Model file {str(path)!r} does not exist.")
    try:
        return open_archive(path)
    except (ArchiveError, OSError) as error:
        raise ExportError(f"Cannot load {str(path)!r} as a Keras model: {error}") from error


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(
    model: str | os.PathLike[str] | Any,
    repo: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    progress: Progress = _noop,
) -> ExportResult:
    """Exports a trained recommender into a Triton model repository.

    Args:
        model: A saved ``.keras`` file (its folder may hold train's vocabularies), or an
            in-memory ``keras.Model`` built from the kmr layers (saved to a temporary
            file first, so it is exported exactly as it would be from disk).
        repo: The model repository root (created if missing).
        options: What to export and how to serve it (default `ExportOptions()`).
        progress: Called as ``progress(stage, seconds, message)`` after each stage.

    Returns:
        The published models and stage timings.

    Raises:
        ExportError: Bad options or input files, a failed check or parity, or an
            unwritable repository. Nothing is published then.

    Example:
        >>> export_model("missing.keras", "repo", ExportOptions(k=0))
        Traceback (most recent call last):
        export.errors.ExportError: Invalid k=0: expected a positive int.
    """
    options = options or ExportOptions()
    options.validate()
    if _check_local_repo(repo) == "s3":  # temp local repo, then export.storage publishes
        from export.storage.route import export_to_object_store

        return export_to_object_store(model, str(repo), options, progress=progress,
                                      export=export_model)
    if hasattr(model, "save") and hasattr(model, "layers"):  # an in-memory keras.Model
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kmr-export-") as folder:
            path = Path(folder) / contract.MODEL_FILE
            try:
                model.save(path)
            except Exception as error:  # noqa: BLE001 - Keras raises many types
                raise ExportError(f"Cannot save the in-memory model: {error}") from error
            return _export_file(path, None, repo, options, progress)
    path = Path(model)
    return _export_file(path, path.parent, repo, options, progress)


def _check_local_repo(repo: str | os.PathLike[str]) -> str | None:
    """``"s3"`` for an ``s3://`` URL (published via `export.storage`), None for a local path.

    Any other URL is refused: ``gs://models/repo`` used to become a local folder ``gs:``.
    """
    from export.storage.location import unsupported_message, url_scheme

    scheme = url_scheme(repo)  # "C:/..." is a path, "s3://" a URL
    if scheme is not None and scheme != "s3":
        raise ExportError(unsupported_message(str(repo), scheme))
    return scheme


def _export_file(model_path: Path, model_dir: Path | None, repo: str | os.PathLike[str],
                 options: ExportOptions, progress: Progress) -> ExportResult:
    _check_local_repo(repo)
    try:
        for model_name, _ in options.model_names():
            check_model_name(model_name)
        repo = check_writable(repo)
    except RepositoryError as error:
        raise ExportError(str(error)) from error
    plans = _version_plans(repo, options)
    if options.backend == BACKEND_PYTHON and not PYTHON_BACKEND_FILE.is_file():
        raise ExportError(f"The python backend file {PYTHON_BACKEND_FILE} is missing.")
    clean_stale_staging(repo)

    start = time.perf_counter()
    archive = open_trained_archive(model_path)
    try:
        job = _Job(archive, model_path, model_dir, repo, options, progress)
        return _export_archive(job, plans, start)
    finally:
        archive.close()


def _version_plans(repo: Path, options: ExportOptions) -> list[tuple[str, str, int]]:
    """``(model name, graph kind, version)`` per model; refuses to overwrite unless forced."""
    plans = []
    for model_name, kind in options.model_names():
        v = options.version if options.version is not None else next_version(repo, model_name)
        if v in existing_versions(repo, model_name) and not options.force:
            raise ExportError(
                f"Version {v} of model {model_name!r} already exists in {str(repo)!r}; "
                "pass --force to replace it or choose another --version."
            )
        plans.append((model_name, kind, v))
    return plans


def _export_archive(job: _Job, plans: list[tuple[str, str, int]], start: float) -> ExportResult:
    """`export_model` after the archive is open: stage every graph, then publish."""
    archive, k = job.archive, job.options.k
    if k > archive.num_items:
        raise ExportError(f"Invalid k={k}: the model has only {archive.num_items} items.")
    _plan_ids(job)
    # Always run: it is also Keras's own safe_mode deserialisation of the config.
    keras_cases = _keras_rerank_cases(archive, k)
    from export.onnx.graphs import RecommenderWeights

    # The tables stay in the archive: they are read in row chunks while being written
    # to the ONNX files and while the parity references are computed.
    weights = RecommenderWeights(archive.users, archive.items, archive.similarity_layer())
    job.report("load", "load", start, f"{job.model_path} ({weights.num_users} users, "
               f"{weights.num_items} items, D={weights.embedding_dim})")

    staged: list[StagedVersion] = []
    models: list[PublishedModel] = []
    try:
        for model_name, kind, v in plans:
            staging = StagedVersion(model_paths(job.repo, model_name, v),
                                    replace=job.options.force)
            staged.append(staging)
            models.append(_stage_graph(job, weights, keras_cases, staging, kind, v))
        start = time.perf_counter()
        for staging in staged:
            staging.publish()
    except BaseException as error:
        for staging in staged:
            staging.discard()
        if isinstance(error, ExportError):
            raise
        if isinstance(error, (RepositoryError, OSError, RuntimeError, ValueError)):
            raise ExportError(f"Export failed: {error}") from error
        raise
    job.report("publish", "publish", start,
               ", ".join(f"{m.name} v{m.version} -> {m.version_dir}" for m in models))
    return ExportResult(tuple(models), job.timings)


def _stage_graph(
    job: _Job,
    weights: Any,
    keras_cases: list[tuple],
    staging: StagedVersion,
    kind: str,
    version: int,
) -> PublishedModel:
    """Converts, checks and verifies one graph into ``staging`` (not yet published)."""
    from export.triton.config import build_model_config, config_to_text

    options = job.options
    # Built first: a bad serving option (e.g. instances=0) fails before any conversion.
    config = build_model_config(
        name=staging.paths.model_dir.name, graph_kind=kind, backend=options.backend,
        id_kind=job.id_kind, k=options.k, index=options.index_of(kind), **options.serving(),
    )
    _check_shared_config(staging, config)
    layout = _lay_out_ids(job, weights, kind)
    served_weights, ids = (weights, None) if layout is None else (layout.weights, layout.ids)
    converted, session, built = _convert_and_check(job, served_weights, staging, kind, ids)
    if built is not None and built.reference is not None and ids is not None:
        # An IVF graph is checked against its own index, built in the graph's row order.
        parity = _verify_parity(job, (layout.weights, (ids.users, ids.items)), keras_cases,
                                session, kind, built)
    else:  # against the trained tables and vocabularies: proves any permutation right
        parity = _verify_parity(job, (weights, job.id_maps), keras_cases, session, kind, built)
    layout = None
    session = None  # free the session's copy of the weights before the next graph
    gc.collect()

    for vocabulary in job.vocabularies:
        vocabulary.write(staging.dir)
    _write_perf_data(job, staging.dir, kind, options.index_of(kind))
    if options.backend == BACKEND_PYTHON:
        _ship_python_backend(staging.dir)
    staging.config_text = config_to_text(config)
    manifest = _manifest(job, converted, kind, weights, parity)
    manifest["vocabularies"] = {v.target: v.origin for v in job.vocabularies}
    manifest["id_kind"] = job.id_kind
    if kind in job.lookups:
        manifest["id_lookup"] = job.lookups[kind]
    manifest["index"] = built.facts if built is not None else {"index": contract.INDEX_EXACT}
    (staging.dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return PublishedModel(staging.paths.model_dir.name, kind, version,
                          staging.paths.version_dir, converted.external_data, parity,
                          manifest["index"])


def _plan_ids(job: _Job) -> None:
    """Decides the published vocabularies and, for raw-id graphs, the maps baked in."""
    from export.onnx.raw_ids import check_reserved, id_kind
    from export.vocabularies import plan_vocabularies
    from kmr.vocabulary import Vocabulary

    archive, options = job.archive, job.options
    job.vocabularies = plan_vocabularies(job.model_dir, (archive.num_users, archive.num_items),
                                         (options.user_vocabulary, options.item_vocabulary))
    if options.ids == IDS_INDEX:
        return
    users, items = (plan.load() for plan in job.vocabularies)
    check_reserved(users, "user")
    check_reserved(items, "item")
    if id_kind(users) != id_kind(items):
        # One id type on the wire: int ids are served as their canonical text ("42"),
        # which round-trips exactly.
        users, items = (Vocabulary([str(i) for i in v.ids]) if v.kind == "int" else v
                        for v in (users, items))
    job.id_maps, job.id_kind = (users, items), id_kind(items)


def _write_perf_data(job: _Job, folder: Path, kind: str, index: str) -> None:
    """perf_analyzer's ``--input-data`` file with valid ids of this version."""
    from export.triton.perf_data import PERF_ANALYZER_FILE, write_perf_analyzer_data

    if job.id_maps is not None:
        users, items = job.id_maps
    else:
        from kmr.vocabulary import Vocabulary

        users = Vocabulary(list(range(min(job.archive.num_users, 1000))))
        items = Vocabulary(list(range(min(job.archive.num_items, 100_000))))
    write_perf_analyzer_data(folder / PERF_ANALYZER_FILE, kind, users, items,
                             raw=job.id_maps is not None, index=index)


def _check_shared_config(staging: StagedVersion, config: Any) -> None:
    """Refuses a version whose model-level facts differ from the served model's config."""
    from export.triton.config import config_from_text, model_parameters

    path = staging.paths.config
    if staging.new_model or not path.is_file():
        return
    others = set(existing_versions(staging.paths.repo, staging.paths.model_dir.name))
    if others <= {int(staging.paths.version_dir.name)} and staging.replace:
        return  # --force over the only version: the model is redefined, nothing else serves
    current = config_from_text(path.read_text(encoding="utf-8"))
    # Configs written before IVF existed have no index parameter: they are exact.
    unset = {contract.PARAM_INDEX: contract.INDEX_EXACT}
    old, new = ({**unset, **model_parameters(c)} for c in (current, config))
    differ = {key: (old.get(key), new.get(key))
              for key in (contract.PARAM_GRAPH_KIND, contract.PARAM_K, contract.PARAM_ID_KIND,
                          contract.PARAM_INDEX)
              if old.get(key) != new.get(key)}
    if current.backend != config.backend:
        differ["backend"] = (current.backend, config.backend)
    if differ:
        changes = ", ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in differ.items())
        raise ExportError(
            f"Model {staging.paths.model_dir.name!r} already serves versions with other "
            f"model-level settings ({changes}); a new version must keep them. Export under "
            "another --name instead.")


def _ship_python_backend(version_dir: Path) -> None:
    """Copies model.py with its bytecode into the version folder.

    The stub's embedded interpreter ignores PYTHONDONTWRITEBYTECODE and writes
    ``__pycache__/`` next to the model.py it imports; in poll mode Triton reads that as a
    change and reloads the model. A valid hash-checked ``.pyc`` shipped with the version
    is used as is, so nothing is written into the repository.
    """
    import importlib.util
    import py_compile

    target = version_dir / PYTHON_BACKEND_FILE.name
    shutil.copyfile(PYTHON_BACKEND_FILE, target)
    py_compile.compile(str(target), cfile=importlib.util.cache_from_source(str(target)),
                       doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def _lay_out_ids(job: _Job, weights: Any, kind: str) -> Any:
    """The `export.onnx.id_lookup.ServedLayout` of a raw-id graph (None: dense indices)."""
    if job.id_maps is None:
        return None
    from export.onnx.id_lookup import lay_out, wants_compact

    start = time.perf_counter()
    layout = lay_out(weights, *job.id_maps,
                     wants_compact(job.options.id_lookup, kind, job.id_maps))
    job.lookups[kind] = layout.lookups
    job.report("convert", f"id_lookup_{kind}", start, f"{kind}: id lookups {layout.lookups}")
    return layout


def _convert_and_check(job: _Job, weights: Any, staging: StagedVersion, kind: str,
                       ids: Any) -> tuple[Any, Any, Any]:
    """Conversion into the staging folder, then onnx.checker + an onnxruntime load.

    ``weights`` and ``ids`` (`export.onnx.raw_ids.ServedIds` or None) are in the served
    graph's row order. Returns ``(converted, session, built)``; ``built`` is the
    `export.onnx.index_convert.IndexBuild` of an IVF / int8 retrieve graph, else None.
    """
    from export.onnx.convert import ConversionError, load_session

    start = time.perf_counter()
    built, index = None, job.options.index_of(kind)
    try:
        if index != contract.INDEX_EXACT:
            from export.onnx.index_convert import convert_index

            built = convert_index(index, weights, staging.dir, k=job.options.k,
                                  settings=job.options.index_settings(), ids=ids,
                                  external_threshold_bytes=job.options.external_threshold_bytes())
            converted = built.converted
        else:
            converted = _convert_exact(job, weights, staging, kind, ids)
    except ConversionError as error:
        raise ExportError(str(error)) from error
    storage = "external data" if converted.external_data else "inline weights"
    what = "" if built is None else f", {built.summary(job.options.k)}"
    job.report("convert", f"convert_{kind}", start,
               f"{kind}: {converted.path.name} ({storage}{what})")

    start = time.perf_counter()
    try:
        session = load_session(converted.path, prepack=False)  # see load_session
    except ConversionError as error:
        raise ExportError(str(error)) from error
    job.report("check", f"check_{kind}", start, f"{kind}: onnx.checker + onnxruntime load OK")
    return converted, session, built


def _convert_exact(job: _Job, weights: Any, staging: StagedVersion, kind: str,
                   ids: Any) -> Any:
    """tf2onnx conversion of the exact ``kind`` graph (raises ConversionError)."""
    from export.onnx.convert import convert_graph
    from export.onnx.graphs import serving_graph

    graph = serving_graph(weights, kind, job.options.k)
    return convert_graph(graph, staging.dir,
                         external_threshold_bytes=job.options.external_threshold_bytes(),
                         ids=ids)


def _verify_parity(job: _Job, reference: tuple[Any, Any], keras_cases: list[tuple],
                   session: Any, kind: str, built: Any = None) -> dict[str, Any]:
    """The served graph vs the layers (valid and invalid ids) and vs ``model()``.

    ``reference`` is ``(weights, id_maps)``: the tables and ``(users, items)``
    vocabularies (None: dense indices) the answers are checked in.

    An index graph gets mixed per-row settings; an IVF graph is checked against the numpy
    reference of its own index (its recall against exact is in ``built.facts``), an int8
    graph against the exact reference like the exact graph.
    """
    from export.parity import (
        check_parity,
        parity_cases,
        rerank_reference,
        retrieve_reference,
        served_runner,
    )

    k = job.options.k
    start = time.perf_counter()
    weights, id_maps = reference
    scorer = rerank_reference if kind == contract.GRAPH_RERANK else retrieve_reference
    run = served_runner(session, kind, id_maps)

    def ref(case: dict) -> dict:
        # by name: an index graph's cases also carry its setting (nprobe / rescore)
        return scorer(weights, *(case[name] for name in contract.INPUTS[kind]), k=k)

    cases = parity_cases(kind, weights.num_users, weights.num_items, k)
    if built is not None:
        ref, cases = built.reference or ref, built.with_setting(cases)
    report = check_parity(run, ref, cases)
    keras_diff = _keras_rerank_diff(keras_cases, run, k) if kind == contract.GRAPH_RERANK else None
    line = report.summary()
    if keras_diff is not None:
        line += f"; vs model(): max |score diff| {keras_diff[0]:.3g}, ids equal: {keras_diff[1]}"
    job.report("verify parity", f"parity_{kind}", start, f"{kind}: {line}")
    if not report.passed or (keras_diff is not None and not keras_diff[2]):
        hint = (" (an int8 re-score too shallow for these embeddings: export with a larger "
                "--rescore)") if job.options.index_of(kind) == contract.INDEX_INT8 else ""
        raise ExportError(f"Parity check failed for the {kind} graph: {line}{hint}")
    parity = asdict(report)
    if keras_diff is not None:
        parity["keras_max_abs_score_diff"], parity["keras_ids_equal"] = keras_diff[:2]
    return parity


def _keras_rerank_cases(archive: Any, k: int) -> list[tuple]:
    """``(users, items, positions, scores)`` from the trained model's ``model([...])``.

    The model is the archive's own config, deserialised by Keras in safe mode with the
    tables shrunk to the sampled rows (`export.archive.sample_model`), so this
    costs the same at 10M items as at 100.
    """
    import numpy as np

    from export.archive import ArchiveError, sample_model
    from export.parity import keras_rerank

    rng = np.random.default_rng(1)
    users = rng.integers(0, archive.num_users, 5).astype(np.int64)
    config = archive.config
    fixed = config.item_input.shape[1] if config.item_input is not None else None
    cases = []
    for n in (fixed,) if fixed else (1, k + 5):
        items = rng.integers(0, archive.num_items, (5, n)).astype(np.int64)
        try:
            model, local_users, local_items = sample_model(archive, users, items)
            answer = keras_rerank(model, local_users, local_items,
                                  (config.user_input, config.item_input), k)
        except (ArchiveError, ValueError) as error:
            raise ExportError(
                f"Cannot load {str(archive.path)!r} as a Keras model: {error}") from error
        cases.append((users, items, *answer))
    return cases


def _keras_rerank_diff(cases: list[tuple], run: Callable, k: int) -> tuple[float, bool, bool]:
    """ONNX vs ``model([...])`` on valid ids: (max |score diff|, ids equal, passed).

    Judged by `export.parity.compare` like the main parity check: onnxruntime may round
    the scores of a candidate repeated in one request differently, which can swap two
    exactly tied positions; that is a tie swap, not a failure.
    """
    import numpy as np

    from export.parity import compare

    worst, equal, passed = 0.0, True, True
    for users, items, positions, scores in cases:
        out = run({contract.USER_ID: users, contract.ITEM_IDS: items})
        width = min(k, positions.shape[1])  # the saved model's own k may differ from k
        want = {
            contract.TOP_ITEM_IDS: np.take_along_axis(items, positions[:, :width], axis=1),
            contract.TOP_POSITIONS: positions[:, :width],
            contract.TOP_SCORES: np.asarray(scores[:, :width], np.float32),
        }
        diff, same, _, ok = compare({name: out[name][:, :width] for name in want}, want)
        worst, equal, passed = max(worst, diff), equal and same, passed and ok
    return worst, equal, passed


def _manifest(job: _Job, converted: Any, kind: str, emb: Any,
              parity: dict) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import tf2onnx

    from export.onnx.convert import OPSET

    model_path, timings = job.model_path, job.timings
    return {
        "format": "kmr-export-manifest/1",
        "source_model": (str(model_path.resolve()) if job.model_dir is not None
                         else "<in-memory keras.Model>"),
        "source_model_bytes": model_path.stat().st_size,
        "graph_kind": kind,
        "k": job.options.k,
        "backend": job.options.backend,
        "num_users": emb.num_users,
        "num_items": emb.num_items,
        "embedding_dim": emb.embedding_dim,
        "onnx_file": converted.path.name,
        "onnx_sha256": _sha256(converted.path),
        "external_data_file": contract.ONNX_WEIGHTS_FILE if converted.external_data else None,
        "external_data_bytes": (
            (converted.path.parent / contract.ONNX_WEIGHTS_FILE).stat().st_size
            if converted.external_data else 0
        ),
        "opset": OPSET,
        "parity": parity,
        "timings_seconds": {key: round(v, 3) for key, v in timings.items()},
        "exported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tools": {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
    }
