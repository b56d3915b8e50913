"""The OpenAI-compatible HTTP API as a FastAPI app around a ``RouterService``.

Routes stay thin: parse, call the service, serialise. Request bodies are validated by models
bounded by the configured limits (``router.request_models``), which the published OpenAPI
schema states. Errors of every kind leave as OpenAI error envelopes; malformed bodies (bad
JSON, invalid UTF-8, wrong types, past the size limit) are 4xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
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

from router.body_limit import BodyLimit
from router.errors import APIError, validation_error_to_api
from router.metrics import endpoint_label
from router.openapi_schema import (
    ERROR_RESPONSES,
    LATENCY_HEADER,
    LATENCY_HEADER_PARAMETER,
    install_openapi,
)
from router.request_models import MAX_LATENCY_BUDGET_MS, RequestModels, request_models
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

#: a latency budget header value: ASCII digits, at most 7 of them (``str.isdigit`` would
#: pass superscripts and other scripts' digits, and ``int()`` of 5,000 digits fails)
_BUDGET_DIGITS = re.compile(r"[0-9]{1,7}")


def _error_response(err: APIError) -> JSONResponse:
    if err.detail != err.message:
        # The client reads the redacted message; the full one stays in the server's log.
        log.warning("error %d answered as %r: %s", err.status, err.message, err.detail)
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

    # Middleware added later wraps what was added before: the guard (keys, metrics) sees
    # every answer, the body limit's 413s included.
    app.add_middleware(BodyLimit, max_bytes=cfg.server.max_body_bytes)
    _install_guard(app, service)
    _install_error_handlers(app)
    models = request_models(cfg, service.backend.name)
    _install_routes(app, service, health, models)
    install_openapi(app, [models.chat, models.completion, models.route])
    return app


def _install_guard(app: FastAPI, service: RouterService) -> None:
    """API keys, metrics and the last-resort error envelope."""
    cfg = service.config
    api_keys = [k.encode() for k in load_api_keys(cfg.auth.api_keys, cfg.auth.api_keys_file)]
    metrics = service.metrics
    routes: set[str] = set()

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        if not routes:
            routes.update(p for r in app.routes if (p := getattr(r, "path", "")).startswith("/v1/"))
        endpoint = endpoint_label(request.url.path, routes)
        try:
            response = await _guarded(request, call_next)
        except APIError as err:
            response = _error_response(err)
        except Exception:  # noqa: BLE001 - last resort: an envelope, never a stack trace
            log.exception("unhandled error on %s", endpoint)
            response = _error_response(
                APIError(500, "internal error", type="server_error", code="internal_error")
            )
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return response

    async def _guarded(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if api_keys and request.url.path.startswith("/v1/"):
            key = _bearer(request)
            if key is None or not _key_accepted(key, api_keys):
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
            log.info("unparsable request body: %s", err.detail)
            return _error_response(
                APIError(400, "request body is not valid UTF-8 JSON", code="json_invalid")
            )
        code = "not_found" if err.status_code == 404 else "http_error"
        return _error_response(APIError(err.status_code, str(err.detail), code=code))


def _install_routes(
    app: FastAPI, service: RouterService, health: HealthCheck | None, models: RequestModels
) -> None:
    """The API's endpoints; each parses, calls the service and serialises."""
    _install_info_routes(app, service, health)
    _install_completion_routes(app, service, models)
    _install_decision_routes(app, service, models)


def _body(model: type[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a route's ``req`` parameter the configured request model: FastAPI validates the
    body with it and publishes its schema (the bounds are only known at runtime)."""

    def apply(route: Callable[..., Any]) -> Callable[..., Any]:
        route.__annotations__["req"] = model
        return route

    return apply


#: what every POST route of the API documents besides its 200
_DOCUMENTED: dict[str, Any] = {
    "responses": ERROR_RESPONSES,
    "openapi_extra": {"parameters": [LATENCY_HEADER_PARAMETER]},
}


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


def _install_completion_routes(app: FastAPI, service: RouterService, models: RequestModels) -> None:
    """Chat and text completions."""

    reasoning_content = service.config.model.reasoning.return_reasoning_content
    auth = service.config.auth
    auth_on = bool(load_api_keys(auth.api_keys, auth.api_keys_file))

    @app.post("/v1/chat/completions", response_model=None, **_DOCUMENTED)
    @_body(models.chat)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        problem = service.validate.chat_problem(req)
        adm = await service.admit(
            problem,
            n=req.n,
            effort=req.reasoning_effort,
            options=_with_header_budget(req.acr, request),
            max_tokens=service.validate.max_tokens(req.max_completion_tokens, req.max_tokens),
            temperature=req.temperature,
            api_key_id=_key_id(request, auth_on),
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

    @app.post("/v1/completions", response_model=None, **_DOCUMENTED)
    @_body(models.completion)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        start = service.clock()  # one deadline for every prompt of the request
        problems = service.validate.completion_problems(req)
        max_tokens = service.validate.max_tokens(req.max_tokens)
        options = _with_header_budget(req.acr, request)
        # The prompts run side by side; the first failure cancels the others and is the
        # request's error.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        service.serve(
                            p,
                            n=req.n,
                            effort=req.reasoning_effort,
                            options=options,
                            max_tokens=max_tokens,
                            temperature=req.temperature,
                            api_key_id=_key_id(request, auth_on),
                            start=start,
                        )
                    )
                    for p in problems
                ]
        except BaseExceptionGroup as failed:
            raise _first_leaf(failed) from None
        served_list = [t.result() for t in tasks]
        headers = served_list[0].decision.headers()
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                completion_events(served_list, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        return JSONResponse(completions_body(served_list), headers=headers)


def _install_decision_routes(app: FastAPI, service: RouterService, models: RequestModels) -> None:
    """The decision alone, and feedback on a past response."""

    auth = service.config.auth
    auth_on = bool(load_api_keys(auth.api_keys, auth.api_keys_file))

    @app.post("/v1/route", **_DOCUMENTED)
    @_body(models.route)
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
    async def feedback(req: FeedbackRequest, request: Request) -> dict[str, Any]:
        return await service.feedback(req.id, req.reward, _key_id(request, auth_on))


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


#: the one key id every caller has when the server accepts any (or no) key
ANONYMOUS_KEY_ID = "anonymous"


def _key_id(request: Request, auth_on: bool) -> str:
    """The caller's id for logs and per-key limits: with auth on, a short non-reversible
    id of the key the guard accepted; with auth off, ``anonymous`` for everyone (a bearer
    string nobody checks must not buy its sender a bucket of its own)."""
    key = _bearer(request)
    if not auth_on or not key:
        return ANONYMOUS_KEY_ID
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]


def _key_accepted(key: str, api_keys: list[bytes]) -> bool:
    """Whether the presented ``key`` is one of ``api_keys`` (UTF-8), compared in constant
    time as bytes: ``hmac.compare_digest`` refuses non-ASCII ``str``. Header values arrive
    decoded as latin-1, so encoding them back gives the bytes the client sent."""
    try:
        presented = key.encode("latin-1")
    except UnicodeEncodeError:
        presented = key.encode("utf-8")
    return any(hmac.compare_digest(presented, k) for k in api_keys)


def _with_header_budget(options: RouterOptions | None, request: Request) -> RouterOptions | None:
    """Apply the ``x-acr-latency-budget-ms`` header when the body did not set one."""
    raw = request.headers.get(LATENCY_HEADER)
    if raw is None:
        return options
    if not _BUDGET_DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LATENCY_BUDGET_MS:
        raise APIError(
            400,
            f"{LATENCY_HEADER} must be an integer from 1 to {MAX_LATENCY_BUDGET_MS}",
            param=LATENCY_HEADER,
            code="invalid_header",
        )
    opts = options or RouterOptions()
    if opts.latency_budget_ms is None:
        opts = opts.model_copy(update={"latency_budget_ms": int(raw)})
    return opts
