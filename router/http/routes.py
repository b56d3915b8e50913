"""The API's endpoints: each parses its body, builds the core's spec, calls the service and
serialises. Domain errors raised on the way leave through the app's error handlers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from policies.decision import Decision
from router.core.contract import Service
from router.core.served import ServedResult
from router.core.service import Event
from router.errors import InvalidOption
from router.http.auth import key_id, load_api_keys
from router.http.errors import APIError
from router.http.openapi import ERROR_RESPONSES, LATENCY_HEADER, LATENCY_HEADER_PARAMETER
from router.http.request_models import MAX_LATENCY_BUDGET_MS, RequestModels
from router.http.responses import chat_body, completions_body, decision_headers, decision_object
from router.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    RouteRequest,
    RouterOptions,
)
from router.http.specs import chat_spec, completion_specs, route_spec
from router.http.streaming import chat_events, completion_events

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
#: the live config's state (``Runtime.config_status``): its revision, the last refusal
ConfigStatus = Callable[[], dict[str, Any]]

#: a latency budget header value: ASCII digits, at most 7 of them (``str.isdigit`` would
#: pass superscripts and other scripts' digits, and ``int()`` of 5,000 digits fails)
_BUDGET_DIGITS = re.compile(r"[0-9]{1,7}")


def install_routes(
    app: FastAPI,
    service: Service,
    health: HealthCheck | None,
    models: RequestModels,
    config_status: ConfigStatus | None = None,
) -> None:
    """The API's endpoints; each parses, calls the service and serialises."""
    _install_info_routes(app, service, health, config_status)
    _install_completion_routes(app, service, models)
    _install_decision_routes(app, service, models)


def body(model: type[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a route's ``req`` parameter the configured request model: FastAPI validates the
    body with it and publishes its schema (the bounds are only known at runtime)."""

    def apply(route: Callable[..., Any]) -> Callable[..., Any]:
        route.__annotations__["req"] = model
        return route

    return apply


#: what every POST route of the API documents besides its 200
DOCUMENTED: dict[str, Any] = {
    "responses": ERROR_RESPONSES,
    "openapi_extra": {"parameters": [LATENCY_HEADER_PARAMETER]},
}


def _install_info_routes(
    app: FastAPI, service: Service, health: HealthCheck | None, config_status: ConfigStatus | None
) -> None:
    """Liveness, readiness (with the live config's revision and its last refusal),
    Prometheus metrics and the model list."""
    metrics = service.metrics

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # Liveness: the process answers. Whether it can serve is /readyz.
        extra = await health() if health is not None else {}
        return {"status": "ok", **extra}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems = await service.readiness()
        # A refused config does not make the replica unready: the running one still serves.
        config = {"config": config_status()} if config_status is not None else {}
        if problems:
            return JSONResponse(
                {"status": "not ready", "problems": problems, **config}, status_code=503
            )
        return JSONResponse({"status": "ready", **config})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "acr"}
                for name in service.models()
            ],
        }


def _install_completion_routes(app: FastAPI, service: Service, models: RequestModels) -> None:
    """Chat and text completions."""

    reasoning_content = service.config.model.reasoning.return_reasoning_content
    auth = service.config.auth
    auth_on = bool(load_api_keys(auth.api_keys, auth.api_keys_file))

    @app.post("/v1/chat/completions", response_model=None, **DOCUMENTED)
    @body(models.chat)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        options = with_header_budget(req.acr, request)
        spec = service.check(chat_spec(req, options, key_id(request, auth_on)))
        events = service.serve(spec, stream=req.stream)
        # The decision comes first: a refusal still gets its status line and envelope.
        decision = await anext(events)
        assert isinstance(decision, Decision)
        headers = decision_headers(decision)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                chat_events(events, decision.model, include_usage=include),
                media_type="text/event-stream",
                headers=headers,
            )
        served = await result_of(events)
        # a pool that failed over served with another decision than the first one
        headers = decision_headers(served.decision)
        return JSONResponse(chat_body(served, reasoning_content=reasoning_content), headers=headers)

    @app.post("/v1/completions", response_model=None, **DOCUMENTED)
    @body(models.completion)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        options = with_header_budget(req.acr, request)
        if req.echo and req.logprobs is not None:
            raise InvalidOption(
                "echo with logprobs is not supported: the prompt's own logprobs are not "
                "computed (ask for either)",
                "echo",
            )
        specs = completion_specs(req, options, key_id(request, auth_on), service.clock())
        specs = service.check_batch(specs)
        # The prompts run side by side; the first failure cancels the others and is the
        # request's error.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(service.answer(s)) for s in specs]
        except BaseExceptionGroup as failed:
            raise _first_leaf(failed) from None
        served_list = [t.result() for t in tasks]
        headers = decision_headers(served_list[0].decision)
        echo = [s.problem.text for s in specs] if req.echo else None
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                completion_events(served_list, include_usage=include, echo=echo),
                media_type="text/event-stream",
                headers=headers,
            )
        return JSONResponse(completions_body(served_list, echo), headers=headers)


async def result_of(events: AsyncIterator[Event]) -> ServedResult:
    """The ``ServedResult`` that ends a request's events."""
    async for item in events:
        if isinstance(item, ServedResult):
            return item
    raise RuntimeError("the request ended without a result")


def _install_decision_routes(app: FastAPI, service: Service, models: RequestModels) -> None:
    """The decision alone, and feedback on a past response."""

    auth = service.config.auth
    auth_on = bool(load_api_keys(auth.api_keys, auth.api_keys_file))

    @app.post("/v1/route", **DOCUMENTED)
    @body(models.route)
    async def route(req: RouteRequest, request: Request) -> JSONResponse:
        decision = await service.route(route_spec(req, with_header_budget(req.acr, request)))
        return JSONResponse(
            {"object": "router.decision", "router": decision_object(decision)},
            headers=decision_headers(decision),
        )

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest, request: Request) -> dict[str, Any]:
        return await service.feedback(req.id, req.reward, key_id(request, auth_on))


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def with_header_budget(options: RouterOptions | None, request: Request) -> RouterOptions | None:
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
