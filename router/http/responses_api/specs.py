"""A Responses API request as the core's ``RequestSpec``: its input items (after the stored
conversation it continues) as chat messages, its options as the chat fields they are."""

from __future__ import annotations

from typing import Any

from backends.base import ChatMessage
from policies.base import Problem
from policies.request import RequestSpec
from router.config import LimitsConfig
from router.conversations.items import chat_messages, truncated
from router.http.responses_api.schemas import ResponsesRequest
from router.http.schemas import RouterOptions
from router.http.specs import options_fields

#: ``reasoning.effort`` as chat's ``reasoning_effort``
EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items (a string is one user message)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return [i.model_dump(exclude_none=True, by_alias=True) for i in req.input]


def chat_params(req: ResponsesRequest) -> dict[str, Any]:
    """The chat fields the Responses options are, forwarded to the server on every call:
    tools (nested as chat nests them), tool choice, output format, and vendor fields."""
    params: dict[str, Any] = {}
    if req.tools:
        params["tools"] = [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})}
            for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        params["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_ or {}}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.parallel_tool_calls is not None:
        params["parallel_tool_calls"] = req.parallel_tool_calls
    if req.user is not None:
        params["user"] = req.user
    return {**req.forwarded(), **params}


def responses_spec(
    req: ResponsesRequest,
    *,
    context: list[ChatMessage],
    options: RouterOptions | None,
    tenant: str,
    response_id: str,
    limits: LimitsConfig,
) -> RequestSpec:
    """The spec of a Responses request that continues ``context`` (the stored turns of
    ``previous_response_id``; instructions are never carried over, as OpenAI's are not)."""
    turn = chat_messages(input_items(req))
    system = [ChatMessage(role="system", content=req.instructions)] if req.instructions else []
    if req.truncation == "auto":
        room = limits.max_prompt_chars - sum(len(m.text) for m in system)
        history = truncated(
            context, turn, max_messages=limits.max_messages - len(system), max_chars=room
        )
    else:
        history = context + turn
    messages = system + history
    text = next((m.text for m in reversed(messages) if m.role == "user"), "")
    problem = Problem(
        text=text,
        messages=messages,
        params=chat_params(req),
        top_p=1.0 if req.top_p is None else req.top_p,
    )
    effort = req.reasoning.effort if req.reasoning is not None else None
    return RequestSpec(
        problem,
        model=req.model,
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        effort=EFFORT.get(effort) if effort else None,
        tenant=tenant,
        response_id=response_id,
        **options_fields(options),
    )
