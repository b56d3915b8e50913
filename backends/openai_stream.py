"""Reading an OpenAI-compatible SSE stream (``"stream": true``) into text deltas and a
final ``Completion``.

Servers differ in what a stream carries: vLLM sends a last chunk with ``usage`` when asked
(``stream_options.include_usage``); llama-cpp-python never does, and sends one token per
chunk. ``StreamAccumulator`` therefore counts tokens from usage when given, else with the
local tokenizer, else as the number of content chunks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from backends.base import Completion, FinishReason
from backends.openai_parse import (
    TextCounter,
    TokenStats,
    choice_text,
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

    def __init__(self, *, chat: bool, want_logprobs: bool) -> None:
        self.chat = chat
        self.want_logprobs = want_logprobs
        self.parts: list[str] = []
        self.content_chunks = 0
        self.finish_reason: FinishReason = "stop"
        self.stats: TokenStats | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> str:
        """Take one event; returns its new text ("" for role, usage or final chunks).

        Raises ``StreamError`` with the server's message for an error event.
        """
        if "error" in event:
            raise StreamError(server_error_detail(json.dumps(event)))
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        text = choice_text(choice, chat=self.chat, delta=True)
        if text:
            self.parts.append(text)
            self.content_chunks += 1
        if choice.get("finish_reason"):
            self.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
        if self.want_logprobs:
            stats = token_stats(choice.get("logprobs"))
            if stats is not None and self.stats is None:
                self.stats = stats
            elif stats is not None and self.stats is not None:
                self.stats.extend(stats)
        return text

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
        return (
            Completion(
                text=self.text,
                tokens=tokens,
                finish_reason=self.finish_reason,
                token_logprobs=stats.logprobs if stats else None,
                token_entropies=stats.entropies if stats else None,
                token_margins=stats.margins if stats else None,
            ),
            usage_int(self.usage, "prompt_tokens"),
        )
