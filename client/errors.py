"""The client's exception tree.

Every error the client raises is a `RecommenderError`. Server and transport failures
are re-raised with ``raise ... from error`` so the tritonclient exception stays
attached as ``__cause__``.

Example:
    >>> from client.errors import InvalidRequestError, RecommenderError
    >>> issubclass(InvalidRequestError, (RecommenderError, ValueError))
    True
"""

from __future__ import annotations

from kmr.vocabulary import UnknownIdError


class RecommenderError(Exception):
    """Base class of every error raised by the client.

    Attributes:
        status: The server or transport status (e.g. ``"StatusCode.UNAVAILABLE"`` or
            ``"400"``) when the error came from the server; None otherwise.
    """

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidRequestError(RecommenderError, ValueError):
    """The request failed client-side validation; nothing was sent."""


class UnknownRawIdError(InvalidRequestError, UnknownIdError):
    """A raw user or item id is not in the model's vocabulary.

    Also a `kmr.vocabulary.UnknownIdError` (a KeyError), so code written against the
    vocabulary keeps working.
    """


class ModelNotFoundError(RecommenderError):
    """The server does not know the model (or the version), or it is not loaded."""


class ServerUnavailableError(RecommenderError):
    """The server could not be reached or answered UNAVAILABLE (after all retries), or
    the call's deadline ran out (the message then names the deadline and the attempts)."""


class TlsHandshakeError(ServerUnavailableError):
    """The TLS handshake failed: the server's certificate is not signed by a trusted CA
    (see ``root_certificates``) or does not name the url's host.

    A `ServerUnavailableError` (as before this class existed), but waiting does not fix
    it: `client.ModelAdmin.wait_until_ready` raises it at once.
    """


class InferenceError(RecommenderError):
    """The server rejected or failed a request (e.g. INVALID_ARGUMENT, INTERNAL)."""


class AuthenticationError(InferenceError):
    """The server or a proxy refused the credentials: gRPC UNAUTHENTICATED or
    PERMISSION_DENIED, HTTP 401 or 403, or Triton's restricted-protocol refusal (a
    missing or wrong header).

    An `InferenceError` (as before this class existed); never retried, and raised at
    once by `client.ModelAdmin.wait_until_ready`.

    Example:
        >>> issubclass(AuthenticationError, InferenceError)
        True
    """


class ModelContractError(RecommenderError):
    """The served model does not follow the kmr contract (config, outputs, vocabularies)."""
