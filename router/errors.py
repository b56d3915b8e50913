"""API errors in OpenAI's envelope, raised by domain code in ``router/`` and rendered once.

``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for anything the
client can fix; the service never answers 500 for bad input.
"""

from __future__ import annotations

from typing import Any


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
        self.message = message
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


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """A 400 for a field the client got wrong."""
    return APIError(400, message, param=param, code=code)


def validation_error_to_api(errors: list[dict[str, Any]]) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field."""
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error") or first.get("msg", "")
        return bad_request(f"request body is not valid JSON: {detail}", code="json_invalid")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
    return bad_request(text, param=param, code=str(first.get("type", "invalid_value")))
