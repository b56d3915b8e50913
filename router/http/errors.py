"""API errors in OpenAI's envelope: the one place that knows status codes.

``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for anything the
client can fix; the service never answers 500 for bad input. The core's domain errors
(``router.errors``) become ``APIError`` by one table (``api_error``); the edge raises
``APIError`` itself only for what it checks alone (keys, headers, bodies). Whatever raised
it, the message a client reads is redacted (``backends.redaction``: no upstream URL, host,
file path or exception repr); ``detail`` keeps the full text for the server's log.
"""

from __future__ import annotations

from typing import Any

from backends.redaction import redact
from router import errors as domain


class APIError(Exception):
    """An error the HTTP layer turns into an OpenAI error envelope with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = message
        self.message = redact(message)
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


#: status and OpenAI error type of each domain error (the first match by class wins)
STATUS: list[tuple[type[domain.RouterError], int, str]] = [
    (domain.UnknownModel, 404, "invalid_request_error"),
    (domain.NotFound, 404, "invalid_request_error"),
    (domain.AlreadyDone, 409, "invalid_request_error"),
    (domain.RateLimited, 429, "rate_limit_error"),
    (domain.DeadlineExceeded, 408, "timeout_error"),
    (domain.BackendUnavailable, 503, "server_error"),
    (domain.BackendFailed, 502, "server_error"),
    (domain.StateUnavailable, 503, "server_error"),
    (domain.BackendRefused, 400, "invalid_request_error"),
    (domain.InvalidOption, 400, "invalid_request_error"),
]


def api_error(err: domain.RouterError) -> APIError:
    """The HTTP answer to a domain error: its status, OpenAI's error type, the field it
    names and, for limits and outages, when to retry."""
    status, kind = next(
        ((s, t) for cls, s, t in STATUS if isinstance(err, cls)), (400, "invalid_request_error")
    )
    headers = {}
    retry = getattr(err, "retry_after_s", None)
    if retry is not None:
        headers["retry-after"] = str(retry)
    return APIError(status, err.message, type=kind, param=err.field, code=err.code, headers=headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """A 400 for a field the client got wrong."""
    return APIError(400, message, param=param, code=code)


def validation_error_to_api(errors: list[dict[str, Any]]) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field."""
    if not errors:
        return bad_request("invalid request body")
    first = _most_telling(errors)
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error") or first.get("msg", "")
        return bad_request(f"request body is not valid JSON: {detail}", code="json_invalid")
    loc = _field_path(first)
    if not loc and first.get("type") == "model_attributes_type":
        return bad_request(
            "request body must be a JSON object (sent as content-type: application/json)",
            code="json_invalid",
        )
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
    return bad_request(text, param=param, code=str(first.get("type", "invalid_value")))


#: where FastAPI says a value came from (not part of the field's name)
_LOCATIONS = frozenset({"body", "query", "header", "path", "cookie"})


def _union_tag(part: object) -> bool:
    """Whether a ``loc`` part names a union member (``str``, ``constrained-str``,
    ``list[TextPart]``) rather than a field: pydantic adds one per member it tried."""
    if not isinstance(part, str):
        return False
    return "[" in part or part.startswith(("constrained-", "function-")) or part in _SCALARS


_SCALARS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _field_path(err: dict[str, Any]) -> list[str]:
    """The error's field path without FastAPI's source and pydantic's union member tags."""
    return [str(p) for p in err.get("loc", ()) if p not in _LOCATIONS and not _union_tag(p)]


def _most_telling(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to report: the first one's field, and for a value that a union field (``stop``:
    a string or a list) refused, the member whose type matched, which says what was wrong
    ("at most 4 items"), rather than the others' "should be a valid string"."""
    first = _field_path(errors[0])
    same = [e for e in errors if _field_path(e)[: len(first)] == first]
    mismatches = ("_type", "is_instance_of", "literal_error")
    return next((e for e in same if not str(e.get("type", "")).endswith(mismatches)), errors[0])
