"""State and logic shared by `RecommenderClient` and `AsyncRecommenderClient`."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from google.protobuf.message import Message

from client._codec import Plan, RecommendRequest, plan_recommend, plan_rerank
from client._retry import DEADLINE_PER_TIMEOUT, DEFAULT_JITTER, ClientStats, RetryPolicy
from client._transport import answer_version
from client.errors import InvalidRequestError, ModelContractError
from client.model_info import ModelInfo, config_message, normalize_config, parse_model_info
from client.vocabularies import VersionedVocabularies, Vocabularies

VocabularySource = Vocabularies | str | os.PathLike[str] | None
# How often one chunk is sent when each answer comes from a version other than the one
# whose vocabularies encoded it (a hot swap while the chunk was in flight).
VERSION_TRIES = 3


class ClientBase:
    """Options, cached model facts and request planning; no I/O."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        model_version: str,
        timeout: float,
        retries: int,
        backoff: float,
        vocabularies: VocabularySource,
        jitter: float = DEFAULT_JITTER,
        deadline: float | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise InvalidRequestError(
                "Invalid value received for argument `model_name`. Expected a non-empty "
                f"str. Received: model_name={model_name!r}"
            )
        if not isinstance(model_version, str) or not (
            model_version == "" or (model_version.isascii() and model_version.isdigit())
        ):
            raise InvalidRequestError(
                "Invalid value received for argument `model_version`. Expected '' (the "
                f"server's choice) or a version number as str. Received: {model_version!r}"
            )
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidRequestError(
                "Invalid value received for argument `timeout`. Expected seconds > 0. "
                f"Received: timeout={timeout!r}"
            )
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout = float(timeout)
        self.retry_policy = RetryPolicy(
            retries=retries,
            backoff=backoff,
            jitter=jitter,
            deadline=DEADLINE_PER_TIMEOUT * self.timeout if deadline is None else deadline,
        )
        self.stats = ClientStats()
        # Injectable for tests (as the clients' ``_sleep``): the retry schedule's clock and
        # its random source for jitter.
        self._clock: Callable[[], float] = time.monotonic
        self._random: Callable[[], float] = random.random
        self._vocabulary_source = vocabularies
        self._info: ModelInfo | None = None
        self._book: VersionedVocabularies | None = None
        self._vocabularies: Vocabularies | None = None
        self._served_version: str | None = None  # the version that answered last

    @property
    def vocabularies(self) -> Vocabularies | None:
        """The vocabularies used last (None until model facts are fetched, or if none given).

        Given as a folder, the client loads each version's own vocabularies when that
        version answers; this is the set of the version it expects to answer next.
        """
        return self._vocabularies

    @property
    def served_version(self) -> str | None:
        """The model version that answered this client last (None before any answer)."""
        return self._served_version

    def _accept_config(self, raw: Any) -> ModelInfo:
        info = parse_model_info(raw)
        book = self._load_vocabularies(info)
        vocabularies = book.initial() if book is not None else None
        if vocabularies is not None and not info.raw_ids:
            for which, size in (("users", info.num_users), ("items", info.num_items)):
                have = len(getattr(vocabularies, which))
                if size is not None and have != size:
                    raise ModelContractError(
                        f"The {which[:-1]} vocabulary has {have} ids but model "
                        f"{info.name!r} has num_{which}={size}: the vocabularies belong "
                        "to another model or version."
                    )
        self._info, self._book, self._vocabularies = info, book, vocabularies
        self._served_version = None  # a refresh starts over from the files' newest version
        return info

    def _load_vocabularies(self, info: ModelInfo) -> VersionedVocabularies | None:
        source = self._vocabulary_source
        if source is None:
            return None
        return VersionedVocabularies(
            source,
            self.model_name,
            model_version=self.model_version,
            user_file=info.user_vocabulary_file,
            item_file=info.item_vocabulary_file,
        )

    def _request_vocabularies(
        self, info: ModelInfo, raw_ids: bool
    ) -> tuple[str | None, Vocabularies | None]:
        """The vocabularies to encode the next request with, and their version.

        The version is the pinned one, else the one that answered last, else the one
        the vocabularies were first loaded for. A raw-id model only pre-checks ids with
        them: without that version's vocabularies the check is left to the graph.

        Raises:
            ModelContractError: a dense-index model lacks that version's vocabularies.
        """
        book = self._book
        if book is None or not (raw_ids or info.raw_ids):  # dense indices: nothing to map
            return None, None
        version = self.model_version or self._served_version or book.initial_version
        if version is None:
            return None, book.initial()
        try:
            vocabularies = book.get(version)
        except ModelContractError:
            if info.raw_ids:
                return version, None
            raise
        self._vocabularies = vocabularies
        return version, vocabularies

    def _review(self, plan: Plan, answer: Any) -> Plan | None:
        """Checks the version that answered a chunk; returns a plan to resend it with.

        None: the answer may be decoded with ``plan``. A `Plan`: the chunk's ids were
        mapped with another version's vocabularies; that plan holds them mapped with the
        answering version's own (send the chunk again).

        Raises:
            ModelContractError: a pinned client got another version's answer, or the
                answering version's vocabularies cannot be had.
        """
        answered = answer_version(answer)
        if not answered:
            return None
        if self.model_version and answered != self.model_version:
            raise ModelContractError(
                f"Model {self.model_name!r}: the client is pinned to version "
                f"{self.model_version} but version {answered} answered."
            )
        self._served_version = answered
        if plan.rebuild is None or plan.version == answered:
            return None
        assert self._book is not None
        vocabularies = self._book.get(answered)  # binds unversioned ones on first use
        if plan.version is None:
            return None
        self.stats.record(version_resends=1)
        return plan.rebuild(answered, vocabularies)

    def _version_unsettled(self, plan: Plan) -> ModelContractError:
        return ModelContractError(
            f"Model {self.model_name!r}: {VERSION_TRIES} answers in a row came from another "
            f"version than the one whose vocabularies encoded the request (last: "
            f"{plan.version}); the model's versions keep changing. Try again later."
        )

    @staticmethod
    def _format_config(raw: Any, as_json: bool) -> dict[str, Any] | Message:
        return normalize_config(raw) if as_json else config_message(raw)

    def _plan_recommend(self, info: ModelInfo, request: RecommendRequest) -> Plan:
        return self._planned(info, request.raw_ids, lambda vocabularies, version: (
            plan_recommend(info, vocabularies, request, version)))

    def _plan_rerank(
        self, info: ModelInfo, user_ids: Any, candidates: Any, k: int | None, raw_ids: bool
    ) -> Plan:
        return self._planned(info, raw_ids, lambda vocabularies, version: plan_rerank(
            info, vocabularies, user_ids, candidates, k=k, raw_ids=raw_ids, version=version))

    def _planned(
        self, info: ModelInfo, raw_ids: bool,
        build: Callable[[Vocabularies | None, str | None], Plan],
    ) -> Plan:
        version, vocabularies = self._request_vocabularies(info, raw_ids)
        plan = _bound(build, vocabularies, version)
        if plan.unknown_exclusions:
            self.stats.record(unknown_exclusions=plan.unknown_exclusions)
        return plan

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, model_name={self.model_name!r}, "
            f"model_version={self.model_version!r})"
        )


def _bound(build: Callable[[Vocabularies | None, str | None], Plan],
           vocabularies: Vocabularies | None, version: str | None) -> Plan:
    """``build``'s plan; one decoded with a vocabulary can be rebuilt for another version."""
    plan = build(vocabularies, version)
    if plan.item_vocabulary is None:
        return plan
    return replace(plan, rebuild=lambda v, vocabs: _bound(build, vocabs, v))
