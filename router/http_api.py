"""The OpenAI-compatible HTTP API as a FastAPI app around a ``RouterService``.

Routes stay thin: parse, call the service, serialise. Errors of every kind leave as OpenAI
error envelopes; malformed bodies (bad JSON, invalid UTF-8, wrong types) are 400s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from router.errors import APIError, validation_error_to_api
from router.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    RouteRequest,
    RouterOptions,
    usage_dict,
)
from router.served import ServedResult
from router.service import RouterService

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


def _chat_body(served: ServedResult) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "finish_reason": r.finish_reason if r.finish_reason in ("stop", "length") else "stop",
            "logprobs": None,
        }
        for i, r in enumerate(served.results)
    ]
    return {
        "id": served.id,
        "object": "chat.completion",
        "created": served.created,
        "model": served.model,
        "choices": choices,
        "usage": usage_dict(
            served.prompt_tokens, served.completion_tokens, served.reasoning_tokens
        ),
        "router": _router_object(served),
    }


def _router_object(served: ServedResult) -> dict[str, Any]:
    obj = served.decision.public()
    obj.update(
        task=served.task_kind,
        latency_ms=round(served.latency_ms, 2),
        stop_reasons=[r.stop_reason for r in served.results],
        samples=sum(r.samples for r in served.results),
        verifier_tokens=sum(r.verifier_tokens for r in served.results),
        verifier_score=max((r.score for r in served.results if r.score is not None), default=None),
        answers=[r.answer for r in served.results],
    )
    return obj


def _chunks(text: str, size: int = 16) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _sse(
    served_list: list[ServedResult], *, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

    The strategy has finished before the first byte (search must end before its answer is
    known), so errors surface as ordinary error responses rather than mid-stream.
    """
    first = served_list[0]
    base = {
        "id": first.id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": first.created,
        "model": first.model,
    }

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    index = 0
    for served in served_list:
        for r in served.results:
            if chat:
                yield event(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                                "logprobs": None,
                            }
                        ],
                    }
                )
            for piece in _chunks(r.text):
                if chat:
                    choice = {
                        "index": index,
                        "delta": {"content": piece},
                        "finish_reason": None,
                        "logprobs": None,
                    }
                else:
                    choice = {
                        "index": index,
                        "text": piece,
                        "finish_reason": None,
                        "logprobs": None,
                    }
                yield event({**base, "choices": [choice]})
            end: dict[str, Any] = {
                "index": index,
                "finish_reason": r.finish_reason,
                "logprobs": None,
            }
            if chat:
                end["delta"] = {}
            else:
                end["text"] = ""
            yield event({**base, "choices": [end], "router": _router_object(served)})
            index += 1
    if include_usage:
        prompt = sum(s.prompt_tokens for s in served_list)
        comp = sum(s.completion_tokens for s in served_list)
        hidden = sum(s.reasoning_tokens for s in served_list)
        yield event({**base, "choices": [], "usage": usage_dict(prompt, comp, hidden)})
    yield b"data: [DONE]\n\n"


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
        extra = await health() if health is not None else {}
        return {"status": "ok", **extra}

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

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        problem = service.validate.chat_problem(req)
        served = await service.serve(
            problem,
            n=req.n,
            effort=req.reasoning_effort,
            options=_with_header_budget(req.acr, request),
            max_tokens=service.validate.max_tokens(req.max_completion_tokens, req.max_tokens),
            temperature=req.temperature,
            api_key_id=_key_id(request),
        )
        headers = served.decision.headers()
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _sse([served], chat=True, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        return JSONResponse(_chat_body(served), headers=headers)

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
                _sse(served_list, chat=False, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        choices: list[dict[str, Any]] = []
        for served in served_list:
            for r in served.results:
                choices.append(
                    {
                        "index": len(choices),
                        "text": r.text,
                        "logprobs": None,
                        "finish_reason": r.finish_reason,
                    }
                )
        body = {
            "id": served_list[0].id.replace("chatcmpl", "cmpl"),
            "object": "text_completion",
            "created": served_list[0].created,
            "model": served_list[0].model,
            "choices": choices,
            "usage": usage_dict(
                sum(s.prompt_tokens for s in served_list),
                sum(s.completion_tokens for s in served_list),
                sum(s.reasoning_tokens for s in served_list),
            ),
            "router": _router_object(served_list[0]),
        }
        return JSONResponse(body, headers=headers)


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
