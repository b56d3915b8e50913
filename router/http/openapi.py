"""What the published OpenAPI schema says beyond the request models: the errors the service
really answers (OpenAI's envelope, never FastAPI's 422) and the latency budget header.

The request bodies' bounds come from ``router.http.request_models`` (the models the routes
validate with); this module documents the rest and takes FastAPI's default 422 responses
out, since every validation error leaves as a 400 in OpenAI's envelope.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from router.http.request_models import MAX_LATENCY_BUDGET_MS

_REF = "#/components/schemas/{model}"
#: the header that sets ``acr.latency_budget_ms`` when the body does not
LATENCY_HEADER = "x-acr-latency-budget-ms"


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str = Field(description="What was wrong and what is valid.")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="The field at fault, when there is one.")
    code: str | None = Field(description="A machine-readable error code.")


class ErrorEnvelope(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


#: the error responses of the API's POST routes
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: a field out of its bounds, malformed JSON or header."),
    401: _error("Missing or invalid API key (when keys are configured)."),
    404: _error("Unknown model or response id."),
    408: _error("No answer within the request's deadline."),
    413: _error("Request body larger than the server's limit."),
    429: _error("Rate limit reached; see Retry-After."),
    503: _error("The model backend is unavailable; see Retry-After."),
}

#: the latency budget header as an OpenAPI parameter (``openapi_extra`` of the routes)
LATENCY_HEADER_PARAMETER: dict[str, Any] = {
    "name": LATENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Latency target in ms when the body's acr.latency_budget_ms is not set.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LATENCY_BUDGET_MS},
}


def install_openapi(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Make ``app.openapi()`` publish the real error responses and exact bounds: FastAPI's
    422 entries and their schemas are removed (validation errors are 400s, documented per
    route), and the request ``models``' schemas are pydantic's own, since FastAPI's
    OpenAPI model turns every bound into a float (2**63 - 1 would read 2**63)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for model in models:
            exact = model.model_json_schema(ref_template=_REF)
            components.update(exact.pop("$defs", {}))
            components[model.__name__] = exact
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
