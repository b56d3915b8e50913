"""Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

``chat_events`` streams a chat answer as it is produced (``RouterService.serve``): pieces go
out as they arrive, the last chunk carries the finish reason and the ``router`` object, and
usage follows when the client asked for it. A failure after the first byte cannot change the
status line any more; it ends the stream with an ``error`` event in OpenAI's envelope.
``completion_events`` replays finished text completions (several prompts) as chunks.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from backends.base import BackendError, StreamDelta
from policies.decision import Decision
from router.core.served import ServedResult
from router.errors import RouterError
from router.http.errors import APIError, api_error
from router.http.responses import finish_reason, router_object
from router.http.schemas import usage_dict

log = logging.getLogger("acr.http")


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> Any:
    return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}


def _chunks(
    item: str | StreamDelta | ServedResult, base: dict[str, Any], include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks one piece of the answer becomes: a text delta, a delta with tool-call
    pieces and logprobs, or (for the result) the last chunk with the finish reason and the
    ``router`` object, then usage when asked."""
    if isinstance(item, str):
        return [{**base, "choices": [_choice({"content": item})]}] if item else []
    if isinstance(item, StreamDelta):
        delta: dict[str, Any] = {"content": item.text} if item.text else {}
        if item.tool_calls is not None:
            delta["tool_calls"] = item.tool_calls
        return [{**base, "choices": [_choice(delta, logprobs=item.logprobs)]}]
    base["id"] = item.id
    reason = finish_reason(item.results[0].finish_reason) if item.results else "stop"
    out = [{**base, "choices": [_choice({}, reason)], "router": router_object(item)}]
    if include_usage:
        usage = usage_dict(item.prompt_tokens, item.completion_tokens, item.reasoning_tokens)
        out.append({**base, "choices": [], "usage": usage})
    return out


async def chat_events(
    pieces: AsyncIterator[Decision | str | StreamDelta | ServedResult],
    model: str,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The chat chunks of one answer streamed from ``pieces`` (text, then the result; the
    request's decision, already sent in the headers, is skipped)."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    try:
        yield event({**base, "choices": [_choice({"role": "assistant", "content": ""})]})
        async for item in pieces:
            if isinstance(item, Decision):
                continue
            for chunk in _chunks(item, base, include_usage):
                yield event(chunk)
    except APIError as err:
        yield event(err.envelope())
    except RouterError as err:
        yield event(api_error(err).envelope())
    except BackendError:
        log.warning("the backend failed in the middle of a stream")
        yield event(
            APIError(
                503,
                "the model backend failed mid-stream",
                type="server_error",
                code="backend_unavailable",
            ).envelope()
        )
    finally:
        # A client that leaves closes this generator: close the answer's too, so the
        # backend stops and the request's tokens are settled now, not at garbage collection.
        close = getattr(pieces, "aclose", None)
        if close is not None:
            await close()
    yield DONE


async def completion_events(
    served_list: list[ServedResult],
    *,
    include_usage: bool,
    echo: list[str] | None = None,
    size: int = 16,
) -> AsyncIterator[bytes]:
    """Finished text completions as ``text_completion`` chunks (pieces of ``size`` chars;
    with ``echo``, each choice's prompt first)."""
    first = served_list[0]
    base = {
        "id": first.id.replace("chatcmpl", "cmpl"),
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
    }
    index = 0
    for k, served in enumerate(served_list):
        for r in served.results:
            text = (echo[k] if echo is not None else "") + r.text
            for i in range(0, len(text), size):
                piece = {
                    "index": index,
                    "text": text[i : i + size],
                    "finish_reason": None,
                    "logprobs": None,
                }
                yield event({**base, "choices": [piece]})
            end = {
                "index": index,
                "text": "",
                "finish_reason": finish_reason(r.finish_reason),
                "logprobs": r.logprobs,
            }
            yield event({**base, "choices": [end], "router": router_object(served)})
            index += 1
    if include_usage:
        usage = usage_dict(
            sum(s.prompt_tokens for s in served_list),
            sum(s.completion_tokens for s in served_list),
            sum(s.reasoning_tokens for s in served_list),
        )
        yield event({**base, "choices": [], "usage": usage})
    yield DONE
