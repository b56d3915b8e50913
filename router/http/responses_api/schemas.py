"""The Responses API's request body (``POST /v1/responses``), bounded like chat requests.

Every field is acted on, forwarded to the model server (unknown vendor fields, as in chat),
or refused with a 400 naming it: the OpenAI fields this router does not implement
(``REFUSED``) when they are set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.http.schemas import RouterOptions

#: OpenAI Responses fields this router does not implement: refused by name when set
REFUSED = {
    "background": "background responses are not supported: send the request and wait",
    "include": "include is not supported: the response holds everything this router returns",
    "conversation": "conversation objects are not supported: use previous_response_id",
    "prompt": "prompt templates are not supported: send input and instructions",
    "top_logprobs": "top_logprobs is not supported on /v1/responses: use chat completions",
    "max_tool_calls": "max_tool_calls is not supported",
}
#: fields acted on by the router (every other field set is forwarded)
ACTED_ON = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "tools",
        "tool_choice",
        "text",
        "parallel_tool_calls",
        "metadata",
        "store",
        "user",
        "stream",
        "previous_response_id",
        "truncation",
        "acr",
        *REFUSED,
    }
)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponseTextPart(_Open):
    """A text part of a message item."""

    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessageItem(_Open):
    """A message input item (``type`` may be left out: ``{"role", "content"}``)."""

    type: Literal["message"] | None = None
    id: str | None = Field(default=None, max_length=128)
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ResponseTextPart]


class FunctionCallItem(_Open):
    """A function call the model made, fed back as input."""

    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class FunctionCallOutputItem(_Open):
    """A function's result for a call of the model."""

    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    output: str


class ReasoningItem(_Open):
    """A reasoning item fed back (kept in the stored input, not sent to the model)."""

    type: Literal["reasoning"]
    id: str | None = Field(default=None, max_length=128)


InputItem = InputMessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(_Open):
    """A function tool, as the Responses API writes it (flat: name at the top level)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(_Open):
    """``tool_choice`` naming one function."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class Reasoning(_Open):
    """``reasoning``: how much to think (the same effort map as chat's
    ``reasoning_effort``; ``minimal`` is ``low``)."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: str | None = None


class TextFormat(_Open):
    """``text.format``: plain text, any JSON object, or JSON under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextOptions(_Open):
    """``text``: the output format."""

    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)

    model: str | None = Field(default=None, max_length=256)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    reasoning: Reasoning | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    text: TextOptions | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: bool = True
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    previous_response_id: str | None = Field(default=None, max_length=128)
    truncation: Literal["auto", "disabled"] | None = None
    acr: RouterOptions | None = None

    def refused(self) -> tuple[str, str] | None:
        """(field, why) of the first OpenAI field set that this router does not implement."""
        extra = self.model_extra or {}
        for name, why in REFUSED.items():
            if extra.get(name) not in (None, False, [], {}):
                return name, why
        return None

    def forwarded(self) -> dict[str, Any]:
        """Unknown vendor fields set (not null), forwarded to the model server as sent."""
        extra = self.model_extra or {}
        return {k: v for k, v in extra.items() if k not in ACTED_ON and v is not None}
