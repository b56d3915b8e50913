"""Canonical JSON of structured answers: equal meaning, equal text (sorted keys, no spaces).

Used to key votes on JSON documents and tool calls (``tasks.structured``) and to read a
tool-call response as one string (``Task.response_of``).
"""

from __future__ import annotations

import json
from typing import Any


def canonical(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, no spaces): equal meaning, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Tool calls as ``{"name", "arguments"}`` with the arguments parsed (their JSON text as
    sent when it does not parse), in order; call ids are left out."""
    out = []
    for call in calls or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        raw = function.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = raw
        out.append({"name": function.get("name"), "arguments": args})
    return out


def tool_response(text: str, calls: list[dict[str, Any]] | None) -> str:
    """The one string a tool-call candidate is read as: its content and its canonical calls."""
    return canonical({"content": text, "tool_calls": canonical_calls(calls)})
