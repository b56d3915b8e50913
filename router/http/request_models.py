"""The API's request models bounded by the live configuration: what the routes validate and
what the published OpenAPI schema states, from one definition.

``router.http.schemas`` holds the OpenAI-compatible models with hard caps (what any server
accepts at most); ``request_models(config, model_names)`` derives subclasses whose fields carry
this server's ``limits`` (``maxItems``, ``maxLength``, ``maximum``, the strategy names), so a
generated client sends only what the service accepts and the service refuses the rest with a
400 naming the field. Bounds JSON Schema cannot state (totals across messages, at least one
user message, ``n`` times a strategy's tokens, the body's bytes) are enforced by
``router.core.validation``, ``policies.bounds`` and the body guard, and written into the fields'
descriptions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from policies.budget import BudgetOverride
from policies.registry import STRATEGY_NAMES
from router.config import AppConfig, LimitsConfig
from router.http.responses_api.schemas import ResponsesRequest
from router.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    InMessage,
    RouteRequest,
    RouterOptions,
    TextPart,
)

#: JSON Schema of a message with role "user" (``messages`` must contain one)
_USER_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {"role": {"const": "user"}},
    "required": ["role"],
}
#: the most a request's ``acr.latency_budget_ms`` (and its header) may ask for
MAX_LATENCY_BUDGET_MS = 3_600_000
#: documented fields only a backend that forwards fields takes (``router.core.validation``
#: refuses them elsewhere, and ``best_of`` everywhere): a deployment without one does not
#: publish them
FORWARDED_ONLY = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "suffix",
        "best_of",
    }
)


@dataclass(frozen=True)
class RequestModels:
    """The request body models of one configured server (subclasses of ``router.http.schemas``'
    models, so the service and validation code take them as the base types)."""

    chat: type[ChatCompletionRequest]
    completion: type[CompletionRequest]
    route: type[RouteRequest]
    responses: type[ResponsesRequest]


def request_models(config: AppConfig, model_names: list[str]) -> RequestModels:
    """The request models bounded by ``config`` (limits, timeouts, strategies) for a server
    that serves ``model_names`` (``Service.models``); the routes validate with them and the
    OpenAPI schema is generated from them. Where no backend is an OpenAI-compatible server,
    none takes forwarded fields: the published chat and completion schemas leave them out
    and allow no others (the service refuses them with a 400 naming the field)."""
    lim = config.limits
    forwards = any(b.kind == "openai" for b in config.pool_backends())
    others = (
        "fields not listed go to the model server as sent"
        if forwards
        else "other fields are refused (the model takes only the fields the router acts on)"
    )
    options = _router_options(config)
    messages = _messages_field(lim, closed=not forwards)
    common = _common_fields(config, model_names, options)
    chat = _derive(
        ChatCompletionRequest,
        f"An OpenAI chat completion request. The JSON body may be at most "
        f"{config.server.max_body_bytes} bytes; {others}.",
        messages=messages,
        max_completion_tokens=(
            int | None,
            Field(default=None, ge=1, le=lim.max_tokens, description="Alias of max_tokens."),
        ),
        **common,
    )
    prompt_text = Annotated[str, StringConstraints(max_length=lim.max_prompt_chars)]
    completion = _derive(
        CompletionRequest,
        f"An OpenAI text completion request. The JSON body may be at most "
        f"{config.server.max_body_bytes} bytes; {others}.",
        prompt=(
            prompt_text | Annotated[list[prompt_text], Field(min_length=1, max_length=lim.max_n)],
            Field(
                description=f"A prompt, or a list of 1 to {lim.max_n} prompts (each answered "
                f"n times); each at most {lim.max_prompt_chars} characters."
            ),
        ),
        **common,
    )
    route = _derive(
        RouteRequest,
        "The inputs of a chat request: decided, not generated.",
        messages=messages,
        acr=(options | None, Field(default=None, description=RouterOptions.__doc__)),
    )
    responses = _responses_model(lim, options)
    if not forwards:
        chat, completion = _closed(chat, FORWARDED_ONLY), _closed(completion, FORWARDED_ONLY)
    return RequestModels(chat=chat, completion=completion, route=route, responses=responses)


def _responses_model(lim: LimitsConfig, options: type) -> Any:
    """``POST /v1/responses``' body with this server's token bound and router options."""
    return _derive(
        ResponsesRequest,
        "An OpenAI Responses API request (POST /v1/responses).",
        max_output_tokens=(
            int | None,
            Field(
                default=None,
                ge=1,
                le=lim.max_tokens,
                description=f"Tokens of the answer, 1 to {lim.max_tokens}.",
            ),
        ),
        acr=(options | None, Field(default=None, description=RouterOptions.__doc__)),
    )


def _derive(base: type[BaseModel], doc: str, **fields: Any) -> Any:
    """A subclass of ``base`` with the same name (the schema's name) and ``fields`` replaced."""
    return create_model(base.__name__, __base__=base, __doc__=doc, **fields)


def _closed(
    model: type[BaseModel], drop: frozenset[str] = frozenset(), roles: list[str] | None = None
) -> Any:
    """``model`` publishing a closed schema: without the properties ``drop`` names, with
    no others allowed (and, for a message, only ``roles``). It validates as ``model`` does:
    what the schema leaves out reaches ``router.core.validation``, whose 400 names the field
    and why."""

    def close(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name in drop:
            properties.pop(name, None)
        if roles is not None:
            properties["role"] = {"enum": roles, "type": "string", "title": "Role"}
        schema["additionalProperties"] = False

    config = ConfigDict(**{**model.model_config, "json_schema_extra": close})  # type: ignore[typeddict-item]
    return type(model.__name__, (model,), {"__doc__": model.__doc__, "model_config": config})


def _messages_field(lim: LimitsConfig, *, closed: bool = False) -> tuple[Any, Any]:
    """``messages``: count, per-message and per-part characters; the total in words.
    ``closed``: messages as a model that takes no tool turns accepts them (no ``tool`` role,
    no fields beyond role and content)."""
    chars = lim.max_message_chars
    part = _derive(
        TextPart,
        "A text part of a message.",
        text=(str, Field(max_length=chars, description=f"At most {chars} characters.")),
    )
    content = Annotated[str, StringConstraints(max_length=chars)] | list[part] | None  # type: ignore[valid-type]
    message = _derive(
        InMessage,
        "A chat message; content is a string or a list of text parts.",
        content=(
            content,
            Field(
                default=None,
                description=f"At most {chars} characters (the text parts together).",
            ),
        ),
    )
    if closed:
        message = _closed(message, roles=["system", "user", "assistant", "developer"])
    return (
        list[message],  # type: ignore[valid-type]
        Field(
            min_length=1,
            max_length=lim.max_messages,
            description=f"1 to {lim.max_messages} messages, at least one with role 'user'; "
            f"their text together at most {lim.max_prompt_chars} characters.",
            # Checked by router.core.validation; stated here so generated clients know it.
            json_schema_extra={"contains": _USER_MESSAGE},
        ),
    )


def _common_fields(config: AppConfig, model_names: list[str], options: type) -> dict[str, Any]:
    """The fields chat and text completions share, bounded by ``config``."""
    lim = config.limits
    stop_text = Annotated[str, StringConstraints(min_length=1, max_length=lim.max_stop_chars)]
    served = list(dict.fromkeys([*model_names, "auto", ""]))
    listed = ", ".join(model_names)
    return {
        "model": (
            str | None,
            Field(
                default=None,
                max_length=256,
                description=f"A served model ({listed}); empty or 'auto' let the router "
                f"choose (the pool's id, {config.pool.id!r}, too). Any other name is a 404.",
                json_schema_extra={"enum": [*served, None]},
            ),
        ),
        "n": (
            int,
            Field(
                default=1,
                ge=1,
                le=lim.max_n,
                description=f"Choices to return, 1 to {lim.max_n}; n times the tokens the "
                f"chosen strategy may generate must stay within {lim.max_request_tokens}.",
            ),
        ),
        "max_tokens": (
            int | None,
            Field(
                default=None,
                ge=1,
                le=lim.max_tokens,
                description=f"Tokens per answer, 1 to {lim.max_tokens}.",
            ),
        ),
        "stop": (
            stop_text | Annotated[list[stop_text], Field(max_length=lim.max_stop)] | None,
            Field(
                default=None,
                description=f"Up to {lim.max_stop} stop strings of 1 to {lim.max_stop_chars} "
                "characters.",
            ),
        ),
        "seed": (
            int | None,
            Field(
                default=None,
                ge=0,
                le=2**63 - 1,
                description="Sampling seed; the n copies and a strategy's calls derive their "
                "own seeds from it (wrapped into the same range).",
            ),
        ),
        "acr": (options | None, Field(default=None, description=RouterOptions.__doc__)),
    }


def _router_options(config: AppConfig) -> type[RouterOptions]:
    """``acr``: the strategy names, the budget within ``limits``, the timeout within
    ``server.max_request_timeout_ms``."""
    lim = config.limits
    names = cast(Any, Literal.__getitem__(("auto", *STRATEGY_NAMES)))
    width = lim.max_search_width
    bounded = {
        "max_tokens": (lim.max_tokens, "Generated tokens per sample or trace"),
        "samples": (lim.max_samples, "Samples (N) to draw"),
        "beam_width": (width, f"States kept per search step (beam_width x expansions <= {width})"),
        "expansions": (width, f"Proposals per state and step (beam_width x expansions <= {width})"),
    }
    fields: dict[str, Any] = {}
    for name, (bound, text) in bounded.items():
        info = BudgetOverride.model_fields[name]
        hard = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), bound)
        top = min(bound, hard)
        fields[name] = (
            int | None,
            Field(default=None, ge=1, le=top, description=f"{text}, 1 to {top}."),
        )
    budget = _derive(BudgetOverride, cast(str, BudgetOverride.__doc__), **fields)
    srv = config.server
    return cast(
        type[RouterOptions],
        _derive(
            RouterOptions,
            cast(str, RouterOptions.__doc__),
            strategy=(names | None, Field(default=None, description="A strategy, or 'auto'.")),
            budget=(budget | None, Field(default=None, description=BudgetOverride.__doc__)),
            latency_budget_ms=(
                int | None,
                Field(default=None, ge=1, le=MAX_LATENCY_BUDGET_MS, description="Latency target."),
            ),
            timeout_ms=(
                int | None,
                Field(
                    default=None,
                    ge=1,
                    le=srv.max_request_timeout_ms,
                    description=f"Deadline of the request, at most "
                    f"{srv.max_request_timeout_ms} ms (default {srv.request_timeout_ms}).",
                ),
            ),
        ),
    )
