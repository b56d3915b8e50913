"""The OpenAI-compatible HTTP API as a FastAPI app around a ``Service`` (one model or a pool).

Routes stay thin: parse, call the service, serialise. Request bodies are validated by models
bounded by the configured limits (``router.http.request_models``), which the published OpenAPI
schema states. Errors of every kind leave as OpenAI error envelopes; malformed bodies (bad
JSON, invalid UTF-8, wrong types, past the size limit) are 4xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from router.conversations.store import ResponseStore
from router.core.contract import Service
from router.errors import RouterError
from router.http.auth import bearer, key_accepted, load_api_keys
from router.http.body_limit import BodyLimit
from router.http.errors import APIError, api_error, validation_error_to_api
from router.http.openapi import install_openapi
from router.http.request_models import request_models
from router.http.responses_api.routes import install_responses_routes
from router.http.routes import ConfigStatus, HealthCheck, install_routes
from router.metrics import endpoint_label

log = logging.getLogger("acr.http")


def _error_response(err: APIError) -> JSONResponse:
    if err.detail != err.message:
        # The client reads the redacted message; the full one stays in the server's log.
        log.warning("error %d answered as %r: %s", err.status, err.message, err.detail)
    return JSONResponse(err.envelope(), status_code=err.status, headers=err.headers)


def build_http_app(
    service: Service,
    *,
    health: HealthCheck | None = None,
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    responses_store: ResponseStore | None = None,
    config_status: ConfigStatus | None = None,
) -> FastAPI:
    """The FastAPI app serving the OpenAI-compatible API over ``service``. ``lifespan``
    runs around the app's life (uvicorn and Ray Serve, at a replica's graceful shutdown
    too, run it): the outcome log's start and final flush; an ingress that reloads its
    config runs it in ``LiveApp`` instead. ``config_status`` is what ``/readyz`` says of
    the live config."""
    cfg = service.config
    app = FastAPI(
        title="Adaptive compute router",
        version="0.1.0",
        description="OpenAI-compatible API that decides per request how much compute to spend.",
        lifespan=(lambda _: lifespan()) if lifespan is not None else None,
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
    models = request_models(cfg, service.models())
    install_routes(app, service, health, models, config_status)
    install_responses_routes(app, service, responses_store, models)
    install_openapi(app, [models.chat, models.completion, models.route, models.responses])
    return app


def _install_guard(app: FastAPI, service: Service) -> None:
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
        except RouterError as err:
            response = _error_response(api_error(err))
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
            key = bearer(request)
            if key is None or not key_accepted(key, api_keys):
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

    @app.exception_handler(RouterError)
    async def _domain_error(_: Request, err: RouterError) -> JSONResponse:
        return _error_response(api_error(err))

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
