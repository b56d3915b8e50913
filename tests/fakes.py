"""A scripted ``FakeBackend`` for fast, exact unit tests of strategies and the service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)

Script = Callable[[str, int, GenerationRequest], str]


class FakeBackend(Backend):
    """Answers from ``script(prompt, sample_index, request)``; one token per character.

    Counts every token it generates (``generated_tokens``) and every call (``calls``), can
    sleep ``latency_s`` per call and fail the next ``fail_next`` calls, so tests can check
    accounting, deadlines and retries exactly.
    """

    name = "acr-bundled"

    def __init__(self, script: Script, *, latency_s: float = 0.0) -> None:
        self.script = script
        self.latency_s = latency_s
        self.generated_tokens = 0
        self.calls: list[GenerationRequest] = []
        self.fail_next = 0
        self.fail_retryable = True

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """``Q: <last user message>\\n``."""
        user = [m.content for m in messages if m.role == "user"]
        return f"Q: {user[-1] if user else ''}\n"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Scripted completions, cut at stop strings and ``max_tokens``."""
        self.calls.append(request)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise BackendError("scripted failure", retryable=self.fail_retryable)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        prompt = request.prompt
        if prompt is None:
            prompt = await self.render_chat(request.messages or [])
        comps = []
        for i in range(request.n):
            text = self.script(prompt, i, request)
            finish = "stop"
            for s in request.stop:
                if s in text:
                    text = text[: text.index(s)]
            if len(text) > request.max_tokens:
                text, finish = text[: request.max_tokens], "length"
            tokens = max(1, len(text))
            self.generated_tokens += tokens
            comps.append(
                Completion(
                    text=text,
                    tokens=tokens,
                    finish_reason=finish,  # type: ignore[arg-type]
                    token_logprobs=[-0.1 * (1 + i % 3)] * tokens if request.logprobs else None,
                    token_entropies=[0.5] * tokens if request.logprobs else None,
                )
            )
        return GenerationResult(completions=comps, prompt_tokens=len(prompt), model=self.name)
