"""State and logic shared by `RecommenderClient` and `AsyncRecommenderClient`."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from client._codec import Plan, plan_recommend, plan_rerank
from client._retry import DEADLINE_PER_TIMEOUT, DEFAULT_JITTER, ClientStats, RetryPolicy
from client.errors import InvalidRequestError, ModelContractError
from client.model_info import ModelInfo, config_message, normalize_config, parse_model_info
from client.vocabularies import Vocabularies, load_vocabularies

VocabularySource = Vocabularies | str | os.PathLike[str] | None


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
        self._vocabularies: Vocabularies | None = None

    @property
    def vocabularies(self) -> Vocabularies | None:
        """The loaded vocabularies (None until model facts are fetched, or if none given)."""
        return self._vocabularies

    def _accept_config(self, raw: Any) -> ModelInfo:
        info = parse_model_info(raw)
        vocabularies = self._load_vocabularies(info)
        if vocabularies is not None:
            for which, size in (("users", info.num_users), ("items", info.num_items)):
                have = len(getattr(vocabularies, which))
                if have != size:
                    raise ModelContractError(
                        f"The {which[:-1]} vocabulary has {have} ids but model "
                        f"{info.name!r} has num_{which}={size}: the vocabularies belong "
                        "to another model or version."
                    )
        self._info, self._vocabularies = info, vocabularies
        return info

    def _load_vocabularies(self, info: ModelInfo) -> Vocabularies | None:
        source = self._vocabulary_source
        if source is None or isinstance(source, Vocabularies):
            return source
        return load_vocabularies(
            source,
            self.model_name,
            model_version=self.model_version,
            user_file=info.user_vocabulary_file,
            item_file=info.item_vocabulary_file,
        )

    @staticmethod
    def _format_config(raw: Any, as_json: bool) -> dict[str, Any] | Message:
        return normalize_config(raw) if as_json else config_message(raw)

    def _plan_recommend(
        self, info: ModelInfo, user_ids: Any, k: int | None, exclude: Any, raw_ids: bool
    ) -> Plan:
        return plan_recommend(
            info, self._vocabularies, user_ids, k=k, exclude=exclude, raw_ids=raw_ids
        )

    def _plan_rerank(
        self, info: ModelInfo, user_ids: Any, candidates: Any, k: int | None, raw_ids: bool
    ) -> Plan:
        return plan_rerank(
            info, self._vocabularies, user_ids, candidates, k=k, raw_ids=raw_ids
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, model_name={self.model_name!r}, "
            f"model_version={self.model_version!r})"
        )
