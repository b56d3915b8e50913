"""The ``Backend`` contract: what every model backend takes and returns.

Strategies (``policies/``) and the HTTP API (``router/``) only ever talk to this interface,
so a scripted fake, the bundled transformers model, a Ray Serve handle and a remote
OpenAI-compatible server are interchangeable.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: why a completion ended: end of sequence or a stop string, the token limit, a tool call
FinishReason = Literal["stop", "length", "tool_calls"]


class BackendError(RuntimeError):
    """A backend could not serve a request (unreachable, crashed, overloaded).

    ``retryable`` tells the caller whether the same request may succeed on another replica;
    ``retry_after_s`` when it is worth trying again (a circuit breaker's remaining cooldown).
    ``status`` is the model server's HTTP status when it answered with one: a request it
    refused (4xx, or a 5xx that says the request failed validation) is the client's error,
    a 5xx on this request alone the server's.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status

    @property
    def server_failed(self) -> bool:
        """The server failed on this request itself (a 5xx that is not a refusal and not
        overload): neither retried nor the client's fault."""
        return not self.retryable and self.status is not None and self.status >= 500


class Capabilities(BaseModel):
    """What a backend can do: found at startup (``Backend.start``) or declared in config.

    Strategies and the policy read it: without ``native_n`` samples fan out as concurrent
    requests (at most ``max_concurrency`` in flight); without ``continuations`` (a raw-prompt
    endpoint and the model's real chat template) nothing that extends a partial answer
    (step search, budget forcing, continuing the probe) can run on chat requests; without
    ``logprobs`` the difficulty probe has no confidence signal.
    """

    model_config = ConfigDict(extra="forbid")

    native_n: bool = Field(default=True, description="n samples of one prompt in one call.")
    logprobs: bool = Field(default=True, description="Token logprobs and top alternatives.")
    completions: bool = Field(default=True, description="Raw prompts (/v1/completions).")
    chat_template: bool = Field(default=True, description="The model's real chat template.")
    exact_token_counts: bool = Field(
        default=True, description="Token counts from the real tokenizer or the server's usage."
    )
    max_concurrency: int = Field(default=16, ge=1, le=1024, description="Calls in flight.")
    max_n: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="The most choices one call may ask for (llama.cpp refuses n past its "
        "slots); more are split over calls. Empty: no bound.",
    )
    parallel_slots: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Requests the server decodes side by side (llama.cpp's -np); 1: it "
        "serialises them, so fanned-out samples are priced one after another.",
    )
    free_logprobs: bool = Field(
        default=True,
        description="Log-probabilities cost (almost) no decode speed, so samples may carry "
        "them; else only the difficulty probe asks for them.",
    )
    forwards_fields: bool = Field(
        default=False,
        description="Request fields the router does not act on (tools, response_format, "
        "penalties, vendor fields) reach the model; without it they are refused.",
    )

    @property
    def continuations(self) -> bool:
        """Whether a partial answer to a chat request can be extended in the model's format."""
        return self.completions and self.chat_template


class ChatMessage(BaseModel):
    """One chat turn, as in OpenAI's API: ``content`` as the client sent it (a string, a
    list of text parts, or None for an assistant turn that only calls tools), and its other
    fields (``tool_calls``, ``tool_call_id``, ``name``) kept as extras and sent upstream
    unchanged."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = ""

    @property
    def text(self) -> str:
        """The message's text, text parts joined ("" when it has none)."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text") or "") for p in self.content)
        return self.content or ""

    def wire(self) -> dict[str, Any]:
        """The message as an OpenAI-compatible server takes it."""
        return self.model_dump()


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
    #: alternatives per token the *client* asked for (None: it asked for no logprobs); the
    #: completion then carries them in OpenAI's shape (``Completion.logprobs``)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    #: request fields the router does not act on, sent to the server on this call as given
    #: (tools, tool_choice, response_format, penalties, logit_bias, vendor fields)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one_input(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


@dataclass(frozen=True)
class ThinkTags:
    """How a reasoning model marks its thinking: ``open`` ... ``close`` before the answer,
    and how many tokens the answer after a forced close may take."""

    open: str = "<think>"
    close: str = "</think>"
    answer_max_tokens: int = 512

    def split(self, text: str) -> tuple[str | None, str]:
        """(thinking, answer) of a response; (None, text) when it holds no closed block."""
        end = text.find(self.close)
        if end == -1:
            return None, text
        start = text.find(self.open)
        begin = start + len(self.open) if -1 < start < end else 0
        return text[begin:end].strip(), text[end + len(self.close) :].lstrip()


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
    #: per token: log-prob of the best alternative minus the runner-up's (nats), when known
    token_margins: list[float] | None = None
    #: the tool calls the model made (OpenAI's ``tool_calls``), when it made any
    tool_calls: list[dict[str, Any]] | None = None
    #: the client's log-probabilities in OpenAI's shape, when it asked for them
    logprobs: dict[str, Any] | None = None

    def mean_entropy(self) -> float | None:
        """Mean per-token entropy in nats, or None when entropies were not requested."""
        if not self.token_entropies:
            return None
        return sum(self.token_entropies) / len(self.token_entropies)


@dataclass
class StreamDelta:
    """A piece of a streamed completion: new ``text`` (and ``tool_calls`` deltas in
    OpenAI's shape, with ``logprobs`` of the piece when the client asked), and at the end
    the whole ``completion`` (with its token count and finish reason) and the
    ``prompt_tokens``."""

    text: str = ""
    completion: Completion | None = None
    prompt_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None


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
    #: what it can do (a class default; ``start`` may discover the real values)
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Sample ``request.n`` continuations; raises ``BackendError`` when it cannot."""

    @abc.abstractmethod
    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The raw prompt the model sees for ``messages`` (its chat template applied).

        Step-level search extends this string with partial reasoning and calls ``generate``
        with ``prompt=``, so chat and raw prompts must agree.
        """

    async def start(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Get ready: connect, discover ``capabilities``; called once before serving."""

    async def ready(self) -> str | None:
        """None when the backend can serve now, else why not (the readiness check)."""
        return None

    def unavailable_for_s(self) -> float:
        """Seconds before it is worth sending it requests again, known without asking it
        (0.0: now). A pool skips a backend while this is positive: its breaker is open."""
        return 0.0

    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` takes in this model's tokenizer, or None when unknown."""
        return None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """One completion (``request.n`` must be 1) as it is produced: text deltas, then a
        last delta holding the whole ``Completion``. The default generates it whole."""
        result = await self.generate(request)
        comp = result.completions[0]
        yield StreamDelta(text=comp.text)
        yield StreamDelta(completion=comp, prompt_tokens=result.prompt_tokens)

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections or memory; the default does nothing."""
