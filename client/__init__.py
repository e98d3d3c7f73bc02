"""Thin Python client of kmr recommenders served by NVIDIA Triton.

Imports tritonclient, numpy and ``kmr.contract`` / ``kmr.vocabulary`` only: never
TensorFlow or Keras. Raw ids go in and come out: a raw-id model (the default export)
maps them in its graph, so the client needs only a URL and a model name; for a
dense-index model the vocabularies published next to each version map them.

Usage (needs a running server)::

    from client import RecommenderClient
    with RecommenderClient("127.0.0.1:8001", "movielens_retrieve") as client:
        info = client.model_info                  # graph kind, id kind, k, limits
        top = client.recommend([1, 7], k=5, exclude=[[318], []])
        top.item_ids, top.scores                  # [2, 5] raw ids (None: empty), float32
        top.num_results, top.model_version        # items per row, the version that answered
    with RecommenderClient("127.0.0.1:8000", "mf_index_rerank", protocol="http") as client:
        client.rerank([0], [[10, 42, 7]], k=2, raw_ids=False).positions

Empty slots are told by ``num_results`` / ``Recommendations.valid``, never by the id:
    >>> import numpy as np
    >>> top = Recommendations(user_ids=np.array([1]), item_ids=np.array([[0, None]]),
    ...     scores=np.array([[0.9, -np.inf]], np.float32), num_results=np.array([1]))
    >>> top.item_ids[top.valid].tolist()
    [0]

Async (gRPC): ``client.aio.AsyncRecommenderClient`` has the same methods as coroutines.
TLS and headers: the clients' ``ssl``, ``root_certificates``, ``private_key``,
``certificate_chain`` and ``headers`` options (validated by ``ConnectionOptions``).
Errors: everything raised is a ``client.RecommenderError``; see ``client.errors``.
Retries: UNAVAILABLE only, with jittered exponential backoff, within a deadline per call
(default ``2 * timeout``); see ``client.RetryPolicy``.
Threads: ``RecommenderClient`` and ``ModelAdmin`` over gRPC may be shared by threads; over
HTTP make one per thread (tritonclient's HTTP client is not thread-safe). An
``AsyncRecommenderClient`` belongs to the event loop it is first used in.
"""

from client._codec import Recommendations
from client._retry import ClientStats, RetryPolicy
from client._transport import ConnectionOptions
from client.admin import ModelAdmin, ModelStatus
from client.aio import AsyncRecommenderClient
from client.errors import (
    AuthenticationError,
    InferenceError,
    InvalidRequestError,
    ModelContractError,
    ModelNotFoundError,
    RecommenderError,
    ServerUnavailableError,
    TlsHandshakeError,
    UnknownRawIdError,
)
from client.model_info import ModelInfo, TensorSpec, normalize_config, parse_model_info
from client.recommender_client import RecommenderClient
from client.vocabularies import Vocabularies, load_vocabularies

__all__ = [
    "AsyncRecommenderClient",
    "AuthenticationError",
    "ClientStats",
    "ConnectionOptions",
    "InferenceError",
    "InvalidRequestError",
    "ModelAdmin",
    "ModelContractError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelStatus",
    "RecommenderClient",
    "RecommenderError",
    "Recommendations",
    "RetryPolicy",
    "ServerUnavailableError",
    "TensorSpec",
    "TlsHandshakeError",
    "UnknownRawIdError",
    "Vocabularies",
    "load_vocabularies",
    "normalize_config",
    "parse_model_info",
]
