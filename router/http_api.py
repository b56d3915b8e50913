"""The OpenAI-compatible HTTP API as a FastAPI app around a ``RouterService``.

Routes stay thin: parse, call the service, serialise. Errors of every kind leave as OpenAI
error envelopes; malformed bodies (bad JSON, invalid UTF-8, wrong types) are 400s.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from router.errors import APIError, validation_error_to_api
from router.responses import chat_body, completions_body
from router.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    RouteRequest,
    RouterOptions,
)
from router.service import RouterService
from router.streaming import chat_events, completion_events

log = logging.getLogger("acr.http")

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.envelope(), status_code=err.status, headers=err.headers)


def load_api_keys(keys: list[str], keys_file: str | None) -> list[str]:
    """Configured keys plus those in ``keys_file`` (one per line, blanks and # ignored)."""
    out = [k for k in keys if k]
    if keys_file:
        for line in Path(keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def build_http_app(
    service: RouterService,
    *,
    health: HealthCheck | None = None,
) -> FastAPI:
    """The FastAPI app serving the OpenAI-compatible API over ``service``."""
    cfg = service.config
    app = FastAPI(
        title="Adaptive compute router",
        version="0.1.0",
        description="OpenAI-compatible API that decides per request how much compute to spend.",
    )

    if cfg.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    _install_guard(app, service)
    _install_error_handlers(app)
    _install_routes(app, service, health)
    return app


def _install_guard(app: FastAPI, service: RouterService) -> None:
    """Body-size limit, API keys, metrics and the last-resort error envelope."""
    cfg = service.config
    api_keys = load_api_keys(cfg.auth.api_keys, cfg.auth.api_keys_file)
    metrics = service.metrics

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        endpoint = request.url.path if request.url.path.startswith("/v1/") else "other"
        try:
            response = await _guarded(request, call_next)
        except APIError as err:
            response = _error_response(err)
        except Exception:  # noqa: BLE001 - last resort: an envelope, never a stack trace
            log.exception("unhandled error on %s", request.url.path)
            response = _error_response(
                APIError(500, "internal error", type="server_error", code="internal_error")
            )
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return response

    async def _guarded(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    raise APIError(400, "content-length must be a number", code="invalid_header")
                if int(length) > cfg.server.max_body_bytes:
                    raise APIError(
                        413,
                        f"request body is {length} bytes; the limit is {cfg.server.max_body_bytes}",
                        code="body_too_large",
                    )
        if api_keys and request.url.path.startswith("/v1/"):
            key = _bearer(request)
            if key is None or not any(hmac.compare_digest(key, k) for k in api_keys):
                raise APIError(
                    401,
                    "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    type="authentication_error",
                    code="invalid_api_key",
                )
        return await call_next(request)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI envelope."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error_to_api(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400:
            # FastAPI's own body parser failed (e.g. bytes that are not UTF-8 JSON).
            return _error_response(
                APIError(400, f"request body is not valid JSON: {err.detail}", code="json_invalid")
            )
        code = "not_found" if err.status_code == 404 else "http_error"
        return _error_response(APIError(err.status_code, str(err.detail), code=code))


def _install_routes(app: FastAPI, service: RouterService, health: HealthCheck | None) -> None:
    """The API's endpoints; each parses, calls the service and serialises."""
    _install_info_routes(app, service, health)
    _install_completion_routes(app, service)
    _install_decision_routes(app, service)


def _install_info_routes(app: FastAPI, service: RouterService, health: HealthCheck | None) -> None:
    """Liveness, Prometheus metrics and the model list."""
    metrics = service.metrics

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # Liveness: the process answers. Whether it can serve is /readyz.
        extra = await health() if health is not None else {}
        return {"status": "ok", **extra}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems = await service.readiness()
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": service.backend.name, "object": "model", "created": 0, "owned_by": "acr"}
            ],
        }


def _install_completion_routes(app: FastAPI, service: RouterService) -> None:
    """Chat and text completions."""

    reasoning_content = service.config.model.reasoning.return_reasoning_content

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        problem = service.validate.chat_problem(req)
        adm = await service.admit(
            problem,
            n=req.n,
            effort=req.reasoning_effort,
            options=_with_header_budget(req.acr, request),
            max_tokens=service.validate.max_tokens(req.max_completion_tokens, req.max_tokens),
            temperature=req.temperature,
            api_key_id=_key_id(request),
        )
        headers = adm.decision.headers()
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                chat_events(service.stream(adm), service.backend.name, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        served = await service.run(adm)
        return JSONResponse(chat_body(served, reasoning_content=reasoning_content), headers=headers)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        problems = service.validate.completion_problems(req)
        max_tokens = service.validate.max_tokens(req.max_tokens)
        served_list = [
            await service.serve(
                p,
                n=req.n,
                effort=req.reasoning_effort,
                options=_with_header_budget(req.acr, request),
                max_tokens=max_tokens,
                temperature=req.temperature,
                api_key_id=_key_id(request),
            )
            for p in problems
        ]
        headers = served_list[0].decision.headers()
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                completion_events(served_list, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        return JSONResponse(completions_body(served_list), headers=headers)


def _install_decision_routes(app: FastAPI, service: RouterService) -> None:
    """The decision alone, and feedback on a past response."""

    @app.post("/v1/route")
    async def route(req: RouteRequest, request: Request) -> JSONResponse:
        chat_req = ChatCompletionRequest(
            messages=req.messages, reasoning_effort=req.reasoning_effort
        )
        problem = service.validate.chat_problem(chat_req)
        options = _with_header_budget(req.acr, request)
        decision = await service.decide(
            problem, service.decision_request(req.reasoning_effort, options, generate=False)
        )
        return JSONResponse(
            {"object": "router.decision", "router": decision.public()},
            headers=decision.headers(),
        )

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        return await service.feedback(req.id, req.reward)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _key_id(request: Request) -> str:
    """A short non-reversible id of the caller's key for logs and per-key limits."""
    key = _bearer(request)
    if not key:
        return ""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]


def _with_header_budget(options: RouterOptions | None, request: Request) -> RouterOptions | None:
    """Apply the ``x-acr-latency-budget-ms`` header when the body did not set one."""
    raw = request.headers.get("x-acr-latency-budget-ms")
    if raw is None:
        return options
    if not raw.isdigit() or not 1 <= int(raw) <= 3_600_000:
        raise APIError(
            400,
            "x-acr-latency-budget-ms must be an integer from 1 to 3600000",
            param="x-acr-latency-budget-ms",
            code="invalid_header",
        )
    opts = options or RouterOptions()
    if opts.latency_budget_ms is None:
        opts = opts.model_copy(update={"latency_budget_ms": int(raw)})
    return opts
