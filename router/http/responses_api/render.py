"""Response objects and stream events of the Responses API, as OpenAI defines them.

``response_object`` renders a finished answer: ``output`` items (the thinking of a model
that returns it, the ``message`` with ``output_text``, the ``function_call`` items),
``status`` and ``incomplete_details`` (the token cap or the deadline cut it), ``usage`` with
``output_tokens_details.reasoning_tokens`` counting every hidden token, and the router's
``router`` object beside them as on chat. ``ResponseEvents`` turns a request's pieces into
the stream's events, in order and numbered: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` / ``.done``, ``response.function_call_arguments.delta`` /
``.done``, ``response.output_item.done``, ``response.completed``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from backends.base import StreamDelta
from policies.base import StrategyResult
from router.conversations.items import call_item, message_item, new_id, output_items
from router.core.served import ServedResult
from router.http.responses import router_object
from router.http.responses_api.schemas import ResponsesRequest


def request_echo(req: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
    """The response object before its answer: what was asked, echoed as OpenAI does."""
    fmt = req.text.format if req.text is not None else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": None,
        },
        "store": req.store,
        "temperature": req.temperature,
        "text": {
            "format": fmt.model_dump(exclude_none=True, by_alias=True) if fmt else {"type": "text"}
        },
        "tool_choice": (
            req.tool_choice
            if isinstance(req.tool_choice, str)
            else req.tool_choice.model_dump()
            if req.tool_choice
            else "auto"
        ),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
    }


def incomplete_reason(result: StrategyResult) -> str | None:
    """Why the answer is incomplete: its token cap or the request's deadline cut it."""
    if result.stop_reason == "deadline":
        return "deadline"
    if result.finish_reason == "length":
        return "max_output_tokens"
    return None


def usage_of(served: ServedResult) -> dict[str, Any]:
    """OpenAI's Responses usage; reasoning tokens are every hidden token (other samples,
    the probe, a model's thinking)."""
    return {
        "input_tokens": served.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": served.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": served.reasoning_tokens},
        "total_tokens": served.prompt_tokens + served.completion_tokens,
    }


def finished(
    echo: dict[str, Any], served: ServedResult, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """The response object of a finished answer with its ``output`` items."""
    result = served.results[0] if served.results else None
    reason = incomplete_reason(result) if result is not None else None
    return {
        **echo,
        "model": served.model,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage_of(served),
        "router": router_object(served),
    }


def response_object(echo: dict[str, Any], served: ServedResult) -> dict[str, Any]:
    """The whole response object of ``served`` (non-streamed)."""
    result = served.results[0] if served.results else None
    output = (
        output_items(result.text, result.tool_calls, result.reasoning) if result is not None else []
    )
    return finished(echo, served, output)


def sse(event: dict[str, Any]) -> bytes:
    """One Responses stream event: its ``event:`` name and ``data:`` line."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ResponseEvents:
    """The numbered events of one streamed response (``echo`` is its object so far).

    With ``thinking`` (a model that returns its thinking first) the pieces are held until
    the answer is finished, so that the reasoning item comes first in the output, as in a
    non-streamed response (such a model's answer is not streamed as it is produced anyway).
    """

    def __init__(self, echo: dict[str, Any], *, thinking: bool = False) -> None:
        self.echo = echo
        self.thinking = thinking
        self.held: list[str | StreamDelta] = []
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.message: int | None = None
        self.calls: dict[int, int] = {}

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next event of type ``kind``."""
        out = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return out

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self.event("response.created", response=self.echo),
            self.event("response.in_progress", response=self.echo),
        ]

    def piece(self, item: str | StreamDelta) -> list[dict[str, Any]]:
        """The events of one piece of the answer: text deltas and tool-call deltas, each
        opening its output item the first time."""
        if self.thinking:
            self.held.append(item)
            return []
        text = item if isinstance(item, str) else item.text
        out: list[dict[str, Any]] = []
        if text:
            out += self._text(text)
        if isinstance(item, StreamDelta):
            for piece in item.tool_calls or []:
                out += self._call(piece)
        return out

    def _text(self, text: str) -> list[dict[str, Any]]:
        out = []
        if self.message is None:
            self.message = len(self.items)
            item = message_item(new_id("msg"), "", status="in_progress")
            item["content"] = []
            self.items.append(item)
            out.append(self._added(self.message))
            part = {"type": "output_text", "text": "", "annotations": []}
            item["content"].append(part)
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.message,
                    content_index=0,
                    part=dict(part),
                )
            )
        item = self.items[self.message]
        item["content"][0]["text"] += text
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.message,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call(self, piece: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        raw = piece.get("index")
        index: int = raw if isinstance(raw, int) else 0
        function = piece.get("function") or {}
        if index not in self.calls:
            self.calls[index] = len(self.items)
            call = {"id": piece.get("id"), "function": {"name": function.get("name")}}
            item = call_item(new_id("fc"), call, status="in_progress")
            self.items.append(item)
            out.append(self._added(self.calls[index]))
        at = self.calls[index]
        item = self.items[at]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        delta = function.get("arguments") or ""
        if delta:
            item["arguments"] += delta
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=at,
                    delta=delta,
                )
            )
        return out

    def _added(self, index: int) -> dict[str, Any]:
        item = json.loads(json.dumps(self.items[index]))
        return self.event("response.output_item.added", output_index=index, item=item)

    def finish(self, served: ServedResult) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The closing events of every open item and ``response.completed`` (or
        ``response.incomplete``); also returns the final response object."""
        out: list[dict[str, Any]] = []
        result = served.results[0] if served.results else None
        if result is not None and result.reasoning is not None and not self.items:
            item = output_items("", None, result.reasoning)[0]
            self.items.append(item)
            out.append(self.event("response.output_item.added", output_index=0, item=item))
        self.thinking = False
        for held in self.held:
            out += self.piece(held)
        if self.message is None and not self.calls:
            out += self._text("")  # an empty answer is still one message
        for index, item in enumerate(self.items):
            out += self._close(index, item)
        response = finished(self.echo, served, self.items)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self.event(kind, response=response))
        return out, response

    def _close(self, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
            )
            out.append(
                self.event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        elif item["type"] == "function_call":
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
        else:  # reasoning: complete as it was added
            out.append(self.event("response.output_item.done", output_index=index, item=item))
            return out
        item["status"] = "completed"
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out
