"""The Responses API's endpoints: ``POST /v1/responses`` (through the same decide -> run ->
record path as chat), and the stored responses: ``GET`` and ``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``.

A response is stored when the client asks (``store``, true by default) and the deployment
keeps responses (``responses.store``); only the key that made it can read, continue or
delete it (any other gets a 404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import BackendError, ChatMessage
from policies.decision import Decision
from policies.request import RequestSpec
from router.conversations.items import chat_messages, new_id, with_ids
from router.conversations.store import ResponseStore
from router.core.contract import Service
from router.core.served import ServedResult
from router.core.service import Event
from router.errors import InvalidOption, NotFound, RouterError
from router.http.auth import key_id, load_api_keys
from router.http.errors import APIError, api_error
from router.http.request_models import RequestModels
from router.http.responses import decision_headers
from router.http.responses_api.render import ResponseEvents, request_echo, response_object, sse
from router.http.responses_api.schemas import ResponsesRequest
from router.http.responses_api.specs import input_items, responses_spec
from router.http.routes import DOCUMENTED, body, result_of, with_header_budget

#: the chat field names the core's errors use, as the Responses API calls them
FIELD_NAMES = {"max_tokens": "max_output_tokens", "messages": "input", "prompt": "input"}

Save = Callable[[dict[str, Any]], Awaitable[bool]]


def install_responses_routes(
    app: FastAPI, service: Service, store: ResponseStore | None, models: RequestModels
) -> None:
    """The Responses API on ``app``; ``store`` keeps responses (None: none are kept);
    ``models`` holds its request model bounded by the configured limits."""
    auth = service.config.auth
    auth_on = bool(load_api_keys(auth.api_keys, auth.api_keys_file))

    @app.post("/v1/responses", response_model=None, **DOCUMENTED)
    @body(models.responses)
    async def create(req: ResponsesRequest, request: Request) -> Response:
        return await _create(service, store, req, request, key_id(request, auth_on))

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, request: Request) -> dict[str, Any]:
        record = await _stored(store, key_id(request, auth_on), response_id)
        response: dict[str, Any] = record["response"]
        return response

    @app.delete("/v1/responses/{response_id}")
    async def delete(response_id: str, request: Request) -> dict[str, Any]:
        if store is None or not await store.delete(key_id(request, auth_on), response_id):
            raise NotFound(f"no stored response with id {response_id!r}", "response_id")
        return {"id": response_id, "object": "response", "deleted": True}

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        request: Request,
        limit: int = Query(default=20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
        after: str | None = Query(default=None, max_length=128),
    ) -> dict[str, Any]:
        record = await _stored(store, key_id(request, auth_on), response_id)
        return page(record.get("input") or [], limit=limit, order=order, after=after)


async def _create(
    service: Service,
    store: ResponseStore | None,
    req: ResponsesRequest,
    request: Request,
    tenant: str,
) -> Response:
    """Serve one Responses request (streamed or not), storing it when it is to be kept."""
    refused = req.refused()
    if refused is not None:
        raise InvalidOption(refused[1], refused[0])
    context = await _context(store, tenant, req.previous_response_id)
    response_id = new_id("resp")
    spec = _checked(
        service,
        responses_spec(
            req,
            context=context,
            options=with_header_budget(req.acr, request),
            tenant=tenant,
            response_id=response_id,
            limits=service.config.limits,
        ),
    )
    keep = store is not None and req.store and service.config.responses.store
    save = _saver(store, tenant, req, spec) if keep and store is not None else None
    events = service.serve(spec, stream=req.stream)
    decision = await anext(events)
    assert isinstance(decision, Decision)
    headers = decision_headers(decision)
    echo = request_echo(req, response_id, decision.model)
    echo["store"] = keep
    if req.stream:
        thinking = spec.problem.think is not None
        stream = _stream(events, ResponseEvents(echo, thinking=thinking), save)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    obj = response_object(echo, await result_of(events))
    if save is not None:
        obj["router"]["stored"] = await save(obj)
    return JSONResponse(obj, headers=headers)


def page(
    items: list[dict[str, Any]], *, limit: int, order: str, after: str | None
) -> dict[str, Any]:
    """One page of ``items`` in ``order``, starting after the item ``after`` names."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    if after is not None:
        ids = [i.get("id") for i in ordered]
        if after not in ids:
            raise InvalidOption(f"no input item with id {after!r} in this response", "after")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


async def _stored(store: ResponseStore | None, tenant: str, response_id: str) -> dict[str, Any]:
    record = await store.get(tenant, response_id) if store is not None else None
    if record is None or not isinstance(record.get("response"), dict):
        raise NotFound(f"no stored response with id {response_id!r}", "response_id")
    return record


async def _context(
    store: ResponseStore | None, tenant: str, previous: str | None
) -> list[ChatMessage]:
    """The conversation ``previous`` stored: every earlier turn as chat messages."""
    if previous is None:
        return []
    record = await store.get(tenant, previous) if store is not None else None
    if record is None:
        raise NotFound(
            f"no stored response with id {previous!r} to continue", "previous_response_id"
        )
    return [ChatMessage(**m) for m in record.get("context") or []]


def _checked(service: Service, spec: RequestSpec) -> RequestSpec:
    """``spec`` validated, errors naming the Responses API's fields."""
    try:
        return service.check(spec)
    except InvalidOption as err:
        field = err.field or ""
        head = field.split(".")[0]
        if head in FIELD_NAMES:
            err.field = FIELD_NAMES[head]
        raise


def _saver(store: ResponseStore, tenant: str, req: ResponsesRequest, spec: RequestSpec) -> Save:
    """What stores a finished response: it, its input items, and the conversation so far
    (this turn's messages after the instructions, and its answer) for the next turn."""
    messages = spec.problem.messages or []
    history = messages[1:] if req.instructions else messages

    async def save(response: dict[str, Any]) -> bool:
        answer = chat_messages(response["output"])
        record = {
            "response": response,
            "input": with_ids(input_items(req)),
            "context": [m.wire() for m in [*history, *answer]],
        }
        return await store.put(tenant, response["id"], record)

    return save


async def _stream(
    events: AsyncIterator[Event], out: ResponseEvents, save: Save | None
) -> AsyncIterator[bytes]:
    """The request's pieces as Responses stream events; a failure after the first byte ends
    the stream with an ``error`` event."""
    try:
        for event in out.start():
            yield sse(event)
        async for item in events:
            if isinstance(item, Decision):
                continue
            if isinstance(item, ServedResult):
                closing, response = out.finish(item)
                if save is not None:
                    response["router"]["stored"] = await save(response)
                for event in closing:
                    yield sse(event)
                continue
            for event in out.piece(item):
                yield sse(event)
    except (RouterError, APIError, BackendError) as exc:
        if isinstance(exc, RouterError):
            err = api_error(exc)
        elif isinstance(exc, APIError):
            err = exc
        else:
            err = APIError(503, "the model backend failed mid-stream", code="backend_unavailable")
        body = err.envelope()["error"]
        yield sse(
            out.event("error", code=body["code"], message=body["message"], param=body["param"])
        )
    finally:
        await events.aclose()  # type: ignore[attr-defined]
