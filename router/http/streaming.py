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

from backends.base import BackendError
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


async def chat_events(
    pieces: AsyncIterator[Decision | str | ServedResult], model: str, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The chat chunks of one answer streamed from ``pieces`` (text, then the result; the
    request's decision, already sent in the headers, is skipped)."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

    try:
        yield event({**base, "choices": [choice({"role": "assistant", "content": ""})]})
        async for item in pieces:
            if isinstance(item, str):
                if item:
                    yield event({**base, "choices": [choice({"content": item})]})
                continue
            if not isinstance(item, ServedResult):
                continue
            base["id"] = item.id
            reason = finish_reason(item.results[0].finish_reason) if item.results else "stop"
            end = {**base, "choices": [choice({}, reason)], "router": router_object(item)}
            yield event(end)
            if include_usage:
                usage = usage_dict(
                    item.prompt_tokens, item.completion_tokens, item.reasoning_tokens
                )
                yield event({**base, "choices": [], "usage": usage})
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
    served_list: list[ServedResult], *, include_usage: bool, size: int = 16
) -> AsyncIterator[bytes]:
    """Finished text completions as ``text_completion`` chunks (pieces of ``size`` chars)."""
    first = served_list[0]
    base = {
        "id": first.id.replace("chatcmpl", "cmpl"),
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
    }
    index = 0
    for served in served_list:
        for r in served.results:
            for i in range(0, len(r.text), size):
                piece = {
                    "index": index,
                    "text": r.text[i : i + size],
                    "finish_reason": None,
                    "logprobs": None,
                }
                yield event({**base, "choices": [piece]})
            end = {
                "index": index,
                "text": "",
                "finish_reason": finish_reason(r.finish_reason),
                "logprobs": None,
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
