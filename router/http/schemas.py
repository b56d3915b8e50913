"""OpenAI-compatible request and response models, plus the router's own extension field.

Every field of a request is acted on by the router (``ACTED_ON``), or forwarded to the model
server on every call a strategy makes (the rest, documented ones and unknown vendor fields
alike: ``forwarded``), or refused with a 400 naming it where the backend or the strategy
cannot honour it (``router.core.validation``). Fields are bounded here by hard caps and
again by the configured ``limits`` (``router.http.request_models``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies.budget import BudgetOverride
from policies.registry import STRATEGY_NAMES

Effort = Literal["low", "medium", "high", "auto"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, str_max_length=8_000_000)


class RouterOptions(BaseModel):
    """The ``acr`` extra body field: name a strategy and budget, or set a latency budget.

    ``{"acr": {"strategy": "beam_search", "budget": {"beam_width": 3}, "latency_budget_ms":
    2000}}``; with the openai client pass it as ``extra_body={"acr": {...}}``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: str | None = Field(default=None, max_length=64)
    budget: BudgetOverride | None = None  # type: ignore[valid-type]
    latency_budget_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    timeout_ms: int | None = Field(default=None, ge=1, le=3_600_000)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str | None) -> str | None:
        if v is not None and v not in STRATEGY_NAMES and v != "auto":
            raise ValueError(f"unknown strategy {v!r}; valid: auto, {', '.join(STRATEGY_NAMES)}")
        return v


#: request fields the router itself acts on; every other field set is forwarded (also
#: ``logprobs``/``top_logprobs``, as sent: the router returns them for the answer it
#: chooses, and asks for more only for its own probe)
ACTED_ON = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "reasoning_effort",
        "echo",
        "acr",
    }
)


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts are understood."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class InMessage(BaseModel):
    """A chat message as clients send it (content may be a string, text parts or null);
    its other fields (``tool_calls``, ``tool_call_id``, ``name``) go to the model as sent."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    """``stream_options``: whether the last chunk carries usage."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class FunctionSpec(BaseModel):
    """A function a tool offers: its name, description and JSON Schema parameters."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    """``tools[i]``: a function tool (forwarded; its calls come back as ``tool_calls``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionSpec


class JsonSchemaSpec(BaseModel):
    """``response_format.json_schema``: the schema answers must follow."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: text, any JSON object, or JSON under a schema (forwarded;
    samples are checked against it)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _Common(_Request):
    model: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=256)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    reasoning_effort: Effort | None = None
    acr: RouterOptions | None = None
    # Forwarded to the model server as sent:
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=300)

    def forwarded(self) -> dict[str, Any]:
        """The fields set (not null) that the router does not act on, as the client sent
        them: documented ones and unknown vendor fields (``top_k``, ``min_p``, ...)."""
        sent = self.model_dump(
            mode="json", exclude_unset=True, by_alias=True, exclude=set(ACTED_ON)
        )
        sent.update({k: v for k, v in (self.model_extra or {}).items() if k not in ACTED_ON})
        return {k: v for k, v in sent.items() if v is not None}

    def stop_list(self) -> list[str]:
        """``stop`` as a list (OpenAI accepts a string or a list)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[InMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolSpec] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def client_logprobs(self) -> int | None:
        """Alternatives per token the client asked for (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    """``POST /v1/completions``; ``prompt`` is a string or a list of strings."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = Field(default=None, max_length=64_000)
    best_of: int | None = Field(default=None, ge=1, le=20)


class RouteRequest(_Request):
    """``POST /v1/route``: the same inputs as a chat request, decided but not generated."""

    messages: list[InMessage] = Field(min_length=1)
    reasoning_effort: Effort | None = None
    acr: RouterOptions | None = None


class FeedbackRequest(_Request):
    """``POST /v1/feedback``: a reward in [0, 1] for a past response id."""

    id: str = Field(min_length=1, max_length=128)
    reward: float = Field(ge=0, le=1)


def usage_dict(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    """OpenAI's ``usage`` object; ``completion_tokens`` includes the hidden reasoning tokens."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }
