"""A scripted ``FakeBackend`` for fast, exact unit tests of strategies, the bench and the service.

Two ways to script it:

- ``FakeBackend(script)`` where ``script(prompt, sample_index, request) -> text`` (the prompt
  is the raw prompt; chat requests are rendered as ``Q: <last user message>\\n`` first);
- ``FakeBackend.canned(texts)``: ``texts`` is a list (sample ``i`` gets ``texts[i % len]``) or
  a mapping from a prompt substring to such a list (the first key found in the prompt wins;
  ``""`` is the fallback).

One character is one token. A completion is the script's text cut at the first stop string
and at ``max_tokens`` (what a real model would have produced); every token of every completed
call is counted in ``generated_tokens`` and every request kept in ``calls``. ``latency_s``
sleeps once per call and ``token_latency_s`` per decode step (the longest of the ``n``
completions, as a batched decoder runs), so deadline tests can stop a strategy in the middle
of its work; a call cancelled while it sleeps counts nothing (its result is never seen).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)
from backends.verifiers.base import Verifier
from policies.base import Problem
from tasks.answers import get_format
from tasks.task import Task

Script = Callable[[str, int, GenerationRequest], str]


def with_verifier(problem: Problem, verifier: Verifier | None, kind: str = "game24") -> Problem:
    """``problem`` as the service hands it to strategies for a bundled-style task: answers on
    an ``Answer:`` line, one step per line, judged by ``verifier`` (None: nothing checks it).
    The scripted outputs of these tests are written in that format."""
    task = Task(kind, verifier, get_format("answer_line"), "\n")
    return dataclasses.replace(problem, task=task)


class FakeBackend(Backend):
    """Answers from ``script(prompt, sample_index, request)``; one token per character.

    ``generated_tokens`` counts every token it generated, ``calls`` every request; ``fail_next``
    makes the next calls raise ``BackendError`` (``fail_retryable`` says how), so tests can
    check accounting, deadlines and retries exactly.
    """

    name = "acr-bundled"

    def __init__(
        self, script: Script, *, latency_s: float = 0.0, token_latency_s: float = 0.0
    ) -> None:
        self.script = script
        self.latency_s = latency_s
        self.token_latency_s = token_latency_s
        self.generated_tokens = 0
        self.calls: list[GenerationRequest] = []
        self.fail_next = 0
        self.fail_retryable = True

    @classmethod
    def canned(
        cls,
        texts: Sequence[str] | Mapping[str, Sequence[str]],
        *,
        latency_s: float = 0.0,
        token_latency_s: float = 0.0,
    ) -> FakeBackend:
        """A backend answering from fixed texts per sample index (and per prompt substring)."""
        table = {"": list(texts)} if not isinstance(texts, Mapping) else dict(texts)

        def script(prompt: str, i: int, req: GenerationRequest) -> str:
            for key, options in table.items():
                if key and key in prompt:
                    return options[i % len(options)]
            if "" not in table:
                raise BackendError(f"no canned text for prompt {prompt!r}", retryable=False)
            options = table[""]
            return options[i % len(options)]

        return cls(script, latency_s=latency_s, token_latency_s=token_latency_s)

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """``Q: <last user message>\\n``."""
        user = [m.text for m in messages if m.role == "user"]
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
            comps.append(
                Completion(
                    text=text,
                    tokens=tokens,
                    finish_reason=finish,  # type: ignore[arg-type]
                    token_logprobs=[-0.1 * (1 + i % 3)] * tokens if request.logprobs else None,
                    token_entropies=[0.5] * tokens if request.logprobs else None,
                )
            )
        if self.token_latency_s:
            # Decode steps run for the longest row; a cancelled call generated nothing.
            await asyncio.sleep(self.token_latency_s * max(c.tokens for c in comps))
        self.generated_tokens += sum(c.tokens for c in comps)
        return GenerationResult(completions=comps, prompt_tokens=len(prompt), model=self.name)


class CountingBackend(Backend):
    """Wraps any backend (the real bundled model too) and counts what it returned.

    ``generated_tokens`` sums the completion tokens of every result handed back and ``calls``
    keeps every request, so accounting tests can run against a real model.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.generated_tokens = 0
        self.calls: list[GenerationRequest] = []

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The wrapped backend's template."""
        return await self.inner.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The wrapped backend's result, counted."""
        self.calls.append(request)
        result = await self.inner.generate(request)
        self.generated_tokens += result.completion_tokens
        return result

    async def close(self) -> None:
        """Closes the wrapped backend."""
        await self.inner.close()
