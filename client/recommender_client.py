"""`RecommenderClient`: the synchronous client of a kmr model served by Triton.

Example (needs a running server; a raw-id model needs no files)::

    from client import RecommenderClient
    with RecommenderClient("localhost:8001", "movielens_retrieve") as client:
        result = client.recommend(["user_42"], k=5, exclude=[["item_7"]])
        result.item_ids[0], result.scores[0], result.model_version

Building a client sends nothing (the model facts are fetched on first use):
    >>> client = RecommenderClient("localhost:8001", "movielens_retrieve")
    >>> client
    RecommenderClient(url='localhost:8001', model_name='movielens_retrieve', model_version='')
    >>> client.close()
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message

from client._base import VERSION_TRIES, ClientBase, VocabularySource
from client._codec import Plan, Recommendations, RecommendRequest
from client._retry import DEFAULT_JITTER, call_with_retry
from client._transport import ConnectionOptions, Transport, check_protocol, make_transport
from client.model_info import ModelInfo

T = TypeVar("T")


class RecommenderClient(ClientBase):
    """Queries one served kmr model over gRPC or HTTP; numpy in, numpy out.

    Model facts (graph kind, id kind, k, limits) are read from the server's model
    config on first use and cached; every request is validated against them before
    anything is sent. Batches larger than the model's ``max_batch_size`` are split into
    chunks and reassembled in order.

    Ids: a raw-id model (``model_info.id_kind`` ``"int"`` or ``"str"``, the default
    export) takes and returns your own ids and needs no files; unknown ids never fail
    a request (an unknown user gets an empty row, an unknown candidate is never
    returned, an unknown exclusion is ignored). A dense-index model (``"index"``) takes
    dense indices, or raw ids mapped with ``vocabularies``.

    Versions: every answer names the version that answered (``model_version`` of the
    result). With vocabularies given as a folder, a dense-index model's ids are mapped
    and decoded with the answering version's own files (``<model>/<version>/``, loaded
    when that version first answers; a chunk encoded for another version is re-encoded
    and sent again, counted in ``stats.version_resends``); if those files are not
    reachable, `ModelContractError` (never a decode with another version's files). A
    `Vocabularies` object serves the first version that answers only.

    Threads: over gRPC one client may be shared by several threads (tritonclient's gRPC
    client is thread-safe for the unary calls made here; the model facts are fetched
    once, under a lock; `stats` counts under a lock). Over HTTP it must not:
    tritonclient's HTTP client is not thread-safe, so make one client per thread.

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a scheme is allowed).
        model_name: The model's name in the repository.
        protocol: ``"grpc"`` or ``"http"``.
        model_version: A version number as str; empty lets the server choose.
        timeout: Seconds allowed per server call.
        retries: Extra attempts when the server answers UNAVAILABLE (never for other
            errors).
        backoff: Seconds before the first retry; doubles on each further retry.
        jitter: Share (0..1) of each backoff wait drawn at random (default 0.5: waits
            in [base / 2, base]); 0 for exact waits.
        deadline: Seconds one server call (the config fetch, or one chunk of a batch)
            may take with all its retries and waits; default ``2 * timeout``, None is
            the default, ``math.inf`` for no bound. Over gRPC an attempt in flight is
            cut to the time left; over HTTP (fixed connection timeouts) the deadline is
            checked before each retry. When it runs out: `ServerUnavailableError`
            naming the deadline and the attempts.
        vocabularies: A `Vocabularies`, or a folder to load them from (the version
            folder, the model folder, or the repository root), or None. Needed for raw
            ids with a dense-index model. With a raw-id model they are optional and only
            checked before sending: unknown users and candidates raise
            `UnknownRawIdError`, unknown exclusions are dropped (``stats.unknown_exclusions``).
        ssl: Connect with TLS (tritonclient's own; an ``https://`` url implies it).
            Server certificates are verified, host names checked.
        root_certificates: Path of a PEM CA bundle for the server's certificate
            (default: the system's CAs).
        private_key: Path of the client's PEM key, for mutual TLS (with
            ``certificate_chain``).
        certificate_chain: Path of the client's PEM certificate chain, for mutual TLS.
        headers: Headers (gRPC metadata) sent with every request, e.g.
            ``{"authorization": "Bearer ..."}`` for an authenticating proxy.
        transport: Replaces the tritonclient adapter (tests, custom channels); the TLS
            options and headers are then validated but not used.

    Raises:
        InvalidRequestError: An option is invalid (e.g. a certificate file is missing:
            the message names the path).

    Example (needs a running server)::

        with RecommenderClient("localhost:8001", "mf_rerank") as client:  # raw-id model
            result = client.rerank(["u1", "u2"], [["i1", "i2", "i3"], ["i3", "i4", "i5"]])
            result.item_ids.shape == result.scores.shape == result.positions.shape  # True
            result.item_ids[result.valid]  # the items; result.num_results per row
        with RecommenderClient("localhost:8001", "mf_index_rerank",
                               vocabularies="model_repository") as client:  # index model
            client.rerank(["u1"], [["i1", "i2"]]).item_indices  # its dense indices too
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        protocol: str = "grpc",
        model_version: str = "",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        vocabularies: VocabularySource = None,
        transport: Transport | None = None,
        ssl: bool = False,
        root_certificates: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        certificate_chain: str | os.PathLike[str] | None = None,
        headers: Mapping[str, str] | None = None,
        jitter: float = DEFAULT_JITTER,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            url,
            model_name,
            model_version=model_version,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            vocabularies=vocabularies,
            jitter=jitter,
            deadline=deadline,
        )
        self.protocol = check_protocol(protocol)
        self.connection = ConnectionOptions.for_url(
            url,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            headers=headers,
        )
        self._transport = transport or make_transport(
            url,
            model_name,
            protocol=protocol,
            model_version=model_version,
            timeout=timeout,
            options=self.connection,
        )
        self._sleep: Callable[[float], None] = time.sleep
        self._config_lock = threading.Lock()  # threads' first requests fetch the config once

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the underlying tritonclient."""
        self._transport.close()

    @property
    def model_info(self) -> ModelInfo:
        """The served model's facts, fetched on first access and then cached."""
        return self._info if self._info is not None else self.fetch_model_info()

    def fetch_model_info(self, *, refresh: bool = False) -> ModelInfo:
        """Returns the model facts, asking the server if not cached or if ``refresh``.

        Call with ``refresh=True`` after a hot update; it also reloads vocabularies given
        as a folder.

        Raises:
            ModelNotFoundError: The server does not serve the model.
            ModelContractError: The config lacks kmr's parameters, or the vocabularies
                do not match it.
        """
        if self._info is None or refresh:
            with self._config_lock:
                if self._info is None or refresh:
                    self._accept_config(self._call(self._transport.get_config))
        assert self._info is not None
        return self._info

    def get_model_config(self, *, as_json: bool = True) -> dict[str, Any] | Message:
        """Returns the server's model config, the same for both protocols.

        Args:
            as_json: True for a dict in the HTTP endpoint's shape (int64 values as
                ints); False for a ``tritonclient.grpc.model_config_pb2.ModelConfig``.

        Example (needs a running server)::

            client.get_model_config()["parameters"]["k"]
            # -> {'string_value': '10'}
        """
        return self._format_config(self._call(self._transport.get_config), as_json)

    def recommend(
        self,
        user_ids: Any,
        *,
        k: int | None = None,
        exclude: Any = None,
        raw_ids: bool = True,
        nprobe: int | None = None,
        rescore: int | None = None,
    ) -> Recommendations:
        """Top-k items of the whole catalogue for each user (``retrieve`` models).

        Args:
            user_ids: 1-D list or array of user ids [B].
            k: Results per user, 1..exported k; default the exported k.
            exclude: Optional list (one per user) of item ids never to return; the
                lists may differ in length (the client pads them with
                `kmr.contract.PAD_INT` / ``PAD_STR``, or -1 for dense indices; lists may
                hold that padding too). Unknown raw ids are ignored.
            raw_ids: True (default): ids are raw ids and results come back as raw ids
                (a raw-id model sends them as given: ints or canonical int text for an
                int model, ``"007"`` is refused; str for a str model). False: ids are
                dense indices (dense-index models only).
            nprobe: IVF models only: lists to probe for these users (more: better recall,
                slower; more than the version's lists: every list, i.e. exact). None
                (default): the value chosen at export (``export_manifest.json``).
            rescore: int8 models only: re-score the best ``k * rescore`` candidates in
                float32 (deeper: exact on more users, slower). None: the export's value.

        Returns:
            `Recommendations` with ``item_ids`` and ``scores`` of shape [B, k],
            ``num_results`` [B] and the answering ``model_version``.

        Raises:
            InvalidRequestError: The request is invalid (nothing is sent).
            UnknownRawIdError: A user (or, for a dense-index model, any id) is not in the
                given vocabularies (nothing is sent).
            ModelContractError: The answer breaks the contract, or came from a version
                whose vocabularies the client cannot have.
            RecommenderError: The server failed (see `client.errors`).

        Example (needs a running server)::

            client.recommend([0, 1], k=3, raw_ids=False).item_ids
            # -> array([[4, 2, 7],
            # -> [1, 4, 0]])
        """
        request = RecommendRequest(user_ids, k, exclude, raw_ids, nprobe, rescore)
        return self._run(self._plan_recommend(self.model_info, request))

    def rerank(
        self,
        user_ids: Any,
        candidate_item_ids: Any,
        *,
        k: int | None = None,
        raw_ids: bool = True,
    ) -> Recommendations:
        """Orders each user's candidate items by score, best first (``rerank`` models).

        Args:
            user_ids: 1-D list or array of user ids [B].
            candidate_item_ids: 2-D [B, N] candidate item ids, N >= 1, same N for all.
            k: Results per user, 1..exported k; default the exported k. With N < k the
                last slots are empty (None / -1 for dense indices, score -inf, position
                -1; ``num_results`` counts the others).
            raw_ids: As in `recommend`.

        Returns:
            `Recommendations` with ``item_ids``, ``scores`` and ``positions`` [B, k].

        Raises:
            InvalidRequestError: The request is invalid (nothing is sent).
            UnknownRawIdError: A user or candidate is not in the given vocabularies.
            ModelContractError: As in `recommend`.
            RecommenderError: The server failed (see `client.errors`).

        Example (needs a running server)::

            client.rerank([0], [[5, 3, 9]], k=2, raw_ids=False).positions
            # -> array([[2, 0]])
        """
        plan = self._plan_rerank(self.model_info, user_ids, candidate_item_ids, k, raw_ids)
        return self._run(plan)

    def _run(self, plan: Plan) -> Recommendations:
        return plan.finish([self._answer(plan, i) for i in range(len(plan.chunks))])

    def _answer(self, plan: Plan, index: int) -> tuple[Plan, Mapping[str, Any]]:
        """Chunk ``index``'s answer, sent again if another version's vocabularies encoded it."""
        for _ in range(VERSION_TRIES):
            answer = self._call(self._transport.infer, plan.chunks[index], plan.outputs)
            again = self._review(plan, answer)
            if again is None:
                return plan, answer
            plan = again
        raise self._version_unsettled(plan)

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        """``method(*args)`` with retries; our adapters also get the deadline's rest."""
        cut = getattr(self._transport, "accepts_timeout", False) is True

        def attempt(seconds_left: float | None) -> T:
            if cut and seconds_left is not None:
                return method(*args, timeout=seconds_left)
            return method(*args)

        return call_with_retry(attempt, self.retry_policy, self.stats, self._sleep,
                               clock=self._clock, draw=self._random)
