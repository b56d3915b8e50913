"""What the router's core says when it cannot serve a request: domain errors, no HTTP.

The core (``router.core``, ``router.quota``) raises these; the HTTP edge maps each kind to a
status code and OpenAI's error envelope in one table (``router.http.errors``), and the
offline commands read them as they are (``acr calibrate`` retries ``BackendUnavailable``).
Every message is meant for the client; the edge redacts upstream details before sending it.
"""

from __future__ import annotations


class RouterError(Exception):
    """A request the router cannot serve as asked. ``field`` names the request field at
    fault (None: the request as a whole); ``code`` is a short machine-readable reason."""

    code: str = "invalid_value"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class InvalidOption(RouterError):
    """A field the client set is invalid or past the server's bounds."""


class UnknownModel(RouterError):
    """The request names a model this server does not serve."""

    code = "model_not_found"


class NotFound(RouterError):
    """What the request refers to (a response id) does not exist for this caller."""

    code = "not_found"


class AlreadyDone(RouterError):
    """The request repeats something that may happen once (feedback on a response)."""

    code = "duplicate_feedback"


class RateLimited(RouterError):
    """The caller's key is past one of its limits (``limit``); retry in ``retry_after_s``."""

    code = "rate_limit_exceeded"

    def __init__(self, limit: str, retry_after_s: int) -> None:
        super().__init__(f"rate limit reached ({limit}); retry in {retry_after_s} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


class DeadlineExceeded(RouterError):
    """Nothing could be answered before the request's deadline."""

    code = "deadline_exceeded"


class BackendRefused(RouterError):
    """The model backend rejected this request (its own 4xx or a validation failure): the
    request's fault, never retried and never a reason to stop serving others."""

    code = "backend_refused"


class StateUnavailable(RouterError):
    """State the request needs (a stored conversation) cannot be read now; retry shortly."""

    code = "state_unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendFailed(RouterError):
    """The model server failed on this request (an internal error), though it is up: not
    retried, and not the client's fault."""

    code = "upstream_error"


class BackendUnavailable(RouterError):
    """The model backend failed or is not reachable; retry in ``retry_after_s``."""

    code = "backend_unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
