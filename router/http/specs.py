"""The API's request bodies as the core's ``RequestSpec``: the only place the two meet.

Each body model (``router.http.schemas``) maps field by field onto the spec; bounds are
checked by the request models (what JSON Schema can state) and by the core's validator
(``router.core.validation``: totals, the configured limits).
"""

from __future__ import annotations

from typing import Any

from backends.base import ChatMessage
from policies.base import Problem
from policies.request import RequestSpec
from router.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    InMessage,
    RouteRequest,
    RouterOptions,
)


def options_fields(options: RouterOptions | None) -> dict[str, Any]:
    """The spec fields of the ``acr`` extension."""
    if options is None:
        return {}
    budget = None
    if options.budget is not None:
        budget = {k: v for k, v in options.budget.model_dump().items() if v is not None} or None
    return {
        "strategy": options.strategy,
        "budget": budget,
        "latency_budget_ms": options.latency_budget_ms,
        "deadline_ms": options.timeout_ms,
    }


def chat_message(m: InMessage) -> ChatMessage:
    """A message as the backend takes it: its content (a string, text parts or null) and
    its other fields (``tool_calls``, ``tool_call_id``, ``name``) as sent."""
    content: Any = m.content
    if isinstance(content, list):
        content = [p.model_dump(exclude_unset=True) for p in content]
    return ChatMessage(role=m.role, content=content, **(m.model_extra or {}))


def _chat_problem(
    messages: list[InMessage],
    seed: int | None,
    stop: list[str],
    params: dict[str, Any] | None = None,
    top_logprobs: int | None = None,
    top_p: float | None = None,
) -> Problem:
    msgs = [chat_message(m) for m in messages]
    text = next((m.text for m in reversed(msgs) if m.role == "user"), "")
    return Problem(
        text=text,
        messages=msgs,
        seed=seed,
        stop=stop,
        params=params or {},
        top_logprobs=top_logprobs,
        top_p=1.0 if top_p is None else top_p,
    )


def first_given(*values: int | None) -> int | None:
    """The first of ``values`` that is set (``max_completion_tokens`` before ``max_tokens``)."""
    return next((v for v in values if v is not None), None)


def chat_spec(
    req: ChatCompletionRequest, options: RouterOptions | None, tenant: str
) -> RequestSpec:
    """A chat completion request as the core's spec (``options``: its ``acr`` field with
    the latency header applied)."""
    problem = _chat_problem(
        req.messages,
        req.seed,
        req.stop_list(),
        req.forwarded(),
        req.client_logprobs(),
        req.top_p,
    )
    return RequestSpec(
        problem,
        model=req.model,
        n=req.n,
        max_tokens=first_given(req.max_completion_tokens, req.max_tokens),
        temperature=req.temperature,
        effort=req.reasoning_effort,
        tenant=tenant,
        **options_fields(options),
    )


def completion_specs(
    req: CompletionRequest, options: RouterOptions | None, tenant: str, start: float
) -> list[RequestSpec]:
    """A text completion request as one spec per prompt, sharing one ``start`` (one
    deadline for every prompt of the request)."""
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    return [
        RequestSpec(
            Problem(
                text=p,
                prompt=p,
                seed=req.seed,
                stop=req.stop_list(),
                params=req.forwarded(),
                top_logprobs=req.logprobs,
                top_p=1.0 if req.top_p is None else req.top_p,
            ),
            model=req.model,
            n=req.n,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            effort=req.reasoning_effort,
            tenant=tenant,
            start=start,
            **options_fields(options),
        )
        for p in prompts
    ]


def route_spec(req: RouteRequest, options: RouterOptions | None) -> RequestSpec:
    """A ``/v1/route`` request: the inputs of a chat request, decided but not generated."""
    return RequestSpec(
        _chat_problem(req.messages, None, []),
        effort=req.reasoning_effort,
        probe=False,
        serving=False,
        **options_fields(options),
    )
