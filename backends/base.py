"""The ``Backend`` contract: what every model backend takes and returns.

Strategies (``policies/``) and the HTTP API (``router/``) only ever talk to this interface,
so a scripted fake, the bundled transformers model, a Ray Serve handle and a remote
OpenAI-compatible server are interchangeable.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length"]


class BackendError(RuntimeError):
    """A backend could not serve a request (unreachable, crashed, overloaded).

    ``retryable`` tells the caller whether the same request may succeed on another replica.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChatMessage(BaseModel):
    """One chat turn, as in OpenAI's API."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class GenerationRequest(BaseModel):
    """What to generate: either a raw ``prompt`` or chat ``messages``, never both.

    ``n`` continuations of one prompt are sampled from one shared prefill. Temperature 0 means
    greedy decoding (then all ``n`` continuations are identical). ``seed`` makes sampling
    reproducible for the same request. ``logprobs`` asks for per-token log-probabilities and
    entropies of the sampled tokens.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    n: int = Field(default=1, ge=1, le=256)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    logprobs: bool = False

    @model_validator(mode="after")
    def _exactly_one_input(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


@dataclass
class Completion:
    """One generated continuation.

    ``tokens`` counts every generated token (stop strings are cut from ``text`` but the tokens
    spent on them are still counted). ``token_logprobs``/``token_entropies`` (nats) are filled
    when the request asked for ``logprobs``; the difficulty probe averages the entropies.
    """

    text: str
    tokens: int
    finish_reason: FinishReason
    token_logprobs: list[float] | None = None
    token_entropies: list[float] | None = None

    def mean_entropy(self) -> float | None:
        """Mean per-token entropy in nats, or None when entropies were not requested."""
        if not self.token_entropies:
            return None
        return sum(self.token_entropies) / len(self.token_entropies)


@dataclass
class GenerationResult:
    """All ``n`` completions of one request plus how many prompt tokens were read once."""

    completions: list[Completion]
    prompt_tokens: int
    model: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        """Total generated tokens over all completions."""
        return sum(c.tokens for c in self.completions)


class Backend(abc.ABC):
    """A model that turns a ``GenerationRequest`` into ``GenerationResult``.

    Implementations: ``TransformersBackend`` (local torch model), ``OpenAIHTTPBackend``
    (vLLM/SGLang/TGI/llama.cpp servers), the Ray Serve handle adapter in ``router/`` and the
    scripted ``FakeBackend`` of the tests.
    """

    #: model name reported by ``/v1/models`` and in responses
    name: str = "backend"

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Sample ``request.n`` continuations; raises ``BackendError`` when it cannot."""

    @abc.abstractmethod
    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The raw prompt the model sees for ``messages`` (its chat template applied).

        Step-level search extends this string with partial reasoning and calls ``generate``
        with ``prompt=``, so chat and raw prompts must agree.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections or memory; the default does nothing."""
