"""Responses API items and chat messages, both ways: pure functions on plain dicts.

Input items (``message``, ``function_call``, ``function_call_output``, ``reasoning``) become
the chat messages a model server takes; an answer becomes output items (``reasoning``,
``message`` with ``output_text``, ``function_call``) and, for the next turn's context, chat
messages again. Consecutive ``function_call`` items are one assistant turn with
``tool_calls``; a ``function_call_output`` is a ``tool`` turn. ``reasoning`` input items
are kept in the stored input but not sent: chat templates of reasoning models drop earlier
turns' thinking, and no chat message carries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from backends.base import ChatMessage


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style (``resp_``, ``msg_``, ``fc_``, ``call_``, ``rs_``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def item_type(item: dict[str, Any]) -> str:
    """An item's type (``message`` for a bare ``{"role", "content"}``)."""
    return str(item.get("type") or ("message" if "role" in item else ""))


def with_ids(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as stored and listed: each with an ``id`` (kept when it had one)."""
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
    out = []
    for item in items:
        kind = item_type(item)
        stored = {"type": kind, **item}
        stored.setdefault("id", new_id(prefix.get(kind, "item")))
        out.append(stored)
    return out


def text_of(content: Any) -> str:
    """A message item's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def chat_messages(items: Iterable[dict[str, Any]]) -> list[ChatMessage]:
    """The chat messages of Responses items, in order (see the module docstring)."""
    out: list[ChatMessage] = []
    calls: list[dict[str, Any]] = []

    def flush() -> None:
        if not calls:
            return
        last = out[-1] if out else None
        if last is not None and last.role == "assistant" and not last.model_extra:
            setattr(last, "tool_calls", list(calls))  # noqa: B010 - an extra field, sent as is
        else:
            # "" rather than null: some servers (llama-cpp-python) refuse a null content.
            turn = {"role": "assistant", "content": "", "tool_calls": list(calls)}
            out.append(ChatMessage.model_validate(turn))
        calls.clear()

    for item in items:
        kind = item_type(item)
        if kind == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
            continue
        flush()
        if kind == "message":
            out.append(ChatMessage(role=item["role"], content=text_of(item.get("content"))))
        elif kind == "function_call_output":
            result = {"role": "tool", "content": str(item.get("output"))}
            out.append(ChatMessage.model_validate({**result, "tool_call_id": item.get("call_id")}))
    flush()
    return out


def output_items(
    text: str, tool_calls: list[dict[str, Any]] | None, reasoning: str | None
) -> list[dict[str, Any]]:
    """The output items of one answer: its thinking (when the model returned it), its text
    (when it has any, or when it made no call), its tool calls."""
    items: list[dict[str, Any]] = []
    if reasoning is not None:
        items.append(
            {
                "type": "reasoning",
                "id": new_id("rs"),
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
            }
        )
    if text or not tool_calls:
        items.append(message_item(new_id("msg"), text))
    for call in tool_calls or []:
        items.append(call_item(new_id("fc"), call))
    return items


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant ``message`` output item holding ``text``."""
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    """A ``function_call`` output item of one chat tool call."""
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def fits(messages: list[ChatMessage], max_messages: int, max_chars: int) -> bool:
    """Whether ``messages`` are within the limits on count and total characters."""
    return len(messages) <= max_messages and sum(len(m.text) for m in messages) <= max_chars


def truncated(
    context: list[ChatMessage],
    turn: list[ChatMessage],
    *,
    max_messages: int,
    max_chars: int,
) -> list[ChatMessage]:
    """``context`` + ``turn`` with the oldest context messages dropped until they fit the
    limits (``truncation: auto``); the turn itself is never cut."""
    kept = list(context)
    while kept and not fits(kept + turn, max_messages, max_chars):
        kept.pop(0)
        # Never start on a tool result whose call was dropped.
        while kept and kept[0].role == "tool":
            kept.pop(0)
    return kept + turn
