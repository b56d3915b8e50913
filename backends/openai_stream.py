"""Reading an OpenAI-compatible SSE stream (``"stream": true``) into text deltas and a
final ``Completion``.

Servers differ in what a stream carries: vLLM sends a last chunk with ``usage`` when asked
(``stream_options.include_usage``); llama-cpp-python never does, and sends one token per
chunk. ``StreamAccumulator`` therefore counts tokens from usage when given, else with the
local tokenizer, else as the number of content chunks. Tool calls arrive as deltas (an
``index``, then pieces of the name and arguments) and are passed on as they come and joined
into the final completion's ``tool_calls``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from backends.base import Completion, FinishReason, StreamDelta
from backends.openai_parse import (
    TextCounter,
    TokenStats,
    choice_text,
    client_logprobs,
    finish_reason,
    server_error_detail,
    token_stats,
    usage_int,
)


class StreamError(Exception):
    """The server reported an error inside the stream (an ``{"error": ...}`` event) or
    sent an event that is not JSON; the message is the server's, not yet scrubbed."""


async def sse_events(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a response's ``data:`` lines, until ``data: [DONE]`` or the end;
    comments (``: ping``) and other fields are skipped. Raises ``StreamError`` for a data
    line that is not a JSON object."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if not payload:
            continue
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise StreamError(f"unreadable stream event: {payload[:80]!r}") from exc
        if not isinstance(event, dict):
            raise StreamError(f"unreadable stream event: {payload[:80]!r}")
        yield event


class StreamAccumulator:
    """Collects one streamed completion: ``feed`` each event, ``finish`` at the end."""

    def __init__(self, *, chat: bool, want_logprobs: bool, client_top: int | None = None) -> None:
        self.chat = chat
        self.want_logprobs = want_logprobs
        self.client_top = client_top
        self.parts: list[str] = []
        self.content_chunks = 0
        self.finish_reason: FinishReason = "stop"
        self.stats: TokenStats | None = None
        self.usage: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}
        self.logprob_tokens: list[Any] = []

    def feed(self, event: dict[str, Any]) -> StreamDelta | None:
        """Take one event; returns what it adds for the client (text, tool-call deltas,
        the client's logprobs), or None for role, usage or empty final chunks.

        Raises ``StreamError`` with the server's message for an error event.
        """
        if "error" in event:
            raise StreamError(server_error_detail(json.dumps(event)))
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        text = choice_text(choice, chat=self.chat, delta=True)
        if text:
            self.parts.append(text)
            self.content_chunks += 1
        if choice.get("finish_reason"):
            self.finish_reason = finish_reason(choice)
        raw = choice.get("logprobs")
        if self.want_logprobs:
            stats = token_stats(raw)
            if stats is not None and self.stats is None:
                self.stats = stats
            elif stats is not None and self.stats is not None:
                self.stats.extend(stats)
        calls = self._tool_calls(choice)
        logprobs = client_logprobs(raw, self.client_top) if self.client_top is not None else None
        if logprobs is not None and isinstance(logprobs.get("content"), list):
            self.logprob_tokens += logprobs["content"]
        if not text and calls is None and logprobs is None:
            return None
        return StreamDelta(text=text, tool_calls=calls, logprobs=logprobs)

    def _tool_calls(self, choice: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The event's tool-call deltas (passed on as sent), joined into ``calls``."""
        delta = choice.get("delta")
        raw = delta.get("tool_calls") if isinstance(delta, dict) else None
        if not isinstance(raw, list) or not raw:
            return None
        for piece in raw:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index", 0) if isinstance(piece.get("index"), int) else 0
            call = self.calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
            for key in ("id", "type"):
                if piece.get(key):
                    call[key] = piece[key]
            function = piece.get("function")
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    if isinstance(function.get(key), str):
                        call["function"][key] += function[key]
        return [p for p in raw if isinstance(p, dict)] or None

    @property
    def text(self) -> str:
        """Everything streamed so far."""
        return "".join(self.parts)

    def finish(self, count_text: TextCounter) -> tuple[Completion, int | None]:
        """The whole ``Completion`` and the prompt tokens from usage (None when the stream
        had no usage). Tokens: usage, else ``count_text`` of the text, else the number of
        content chunks (servers without usage send about one token a chunk)."""
        tokens = usage_int(self.usage, "completion_tokens")
        if tokens is None:
            tokens = count_text(self.text)
        if tokens is None:
            tokens = self.content_chunks
        stats = self.stats
        calls = [self.calls[i] for i in sorted(self.calls)] or None
        if calls is not None:
            for call in calls:
                call.setdefault("type", "function")
        return (
            Completion(
                text=self.text,
                tokens=tokens,
                finish_reason=self.finish_reason,
                token_logprobs=stats.logprobs if stats else None,
                token_entropies=stats.entropies if stats else None,
                token_margins=stats.margins if stats else None,
                tool_calls=calls,
                logprobs=(
                    {"content": self.logprob_tokens} if self.client_top is not None else None
                ),
            ),
            usage_int(self.usage, "prompt_tokens"),
        )
