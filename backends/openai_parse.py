"""Reading OpenAI-compatible responses: texts, finish reasons, token counts, logprobs, errors.

Pure functions used by ``OpenAIHTTPBackend`` (``backends/openai_http.py``) and its streaming
and discovery helpers; nothing here does I/O, so each shape can be unit-tested on its own.

Two logprob shapes exist in the wild and both are read:

* chat (``/chat/completions``): ``{"content": [{"token", "logprob", "top_logprobs": [{"token",
  "logprob"}, ...]}, ...]}``;
* legacy completions (``/completions``): ``{"tokens": [...], "token_logprobs": [...],
  "top_logprobs": [{text: logprob, ...}, ...]}`` (llama-cpp-python, vLLM, OpenAI).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import Completion, FinishReason
from backends.redaction import redact

#: alternatives asked for per token: enough for a useful entropy, accepted by every server
TOP_LOGPROBS = 5
#: longest server error text passed on to clients
MAX_ERROR_CHARS = 200
#: a margin when only the chosen token is listed and it holds (almost) all the mass
MAX_MARGIN = 30.0

#: counts the tokens of a text with the model's tokenizer, or None when there is none
TextCounter = Callable[[str], int | None]


@dataclass
class TokenStats:
    """Per-token statistics of one completion (all lists have one entry per token)."""

    logprobs: list[float]
    entropies: list[float]
    margins: list[float]

    def extend(self, other: TokenStats) -> None:
        """Append ``other``'s tokens (a stream delivers a completion a few tokens a chunk)."""
        self.logprobs += other.logprobs
        self.entropies += other.entropies
        self.margins += other.margins


def top_values(top: Any) -> list[float]:
    """The logprobs of one token's top alternatives, best first.

    ``top`` is a chat list (``[{"token", "logprob"}]``) or a legacy dict (``{text: logprob}``);
    anything else (None, a malformed entry) gives ``[]``.
    """
    if isinstance(top, dict):
        raw: Iterable[Any] = top.values()
    elif isinstance(top, list):
        raw = (t.get("logprob") for t in top if isinstance(t, dict))
    else:
        return []
    values = [float(v) for v in raw if isinstance(v, int | float) and not math.isnan(v)]
    return sorted(values, reverse=True)


def entropy(values: Sequence[float]) -> float:
    """Entropy (nats) of the distribution the top-k logprobs describe, renormalised over the
    k shown; 0.0 when nothing was given. It underestimates the full entropy (the tail is
    missing) but ranks uncertain tokens the same way, which is what the probe needs."""
    probs = [math.exp(v) for v in values]
    total = sum(probs)
    if total <= 0:
        return 0.0
    return -sum((p / total) * math.log(p / total) for p in probs if p > 0)


def margin(values: Sequence[float]) -> float:
    """Top-1 logprob minus top-2 logprob (nats, >= 0) of one token's sorted alternatives.

    With a single alternative listed (some servers merge alternatives that decode to the same
    text) the runner-up can hold at most the remaining mass ``1 - p1``, so that bound gives a
    lower bound on the margin (capped at ``MAX_MARGIN``); 0.0 when nothing was given.
    """
    if len(values) >= 2:
        return values[0] - values[1]
    if not values:
        return 0.0
    rest = -math.expm1(values[0])  # 1 - p1, accurate when p1 is close to 1
    if rest <= 0:
        return MAX_MARGIN
    return min(MAX_MARGIN, values[0] - math.log(rest))


def token_stats(logprobs: Any) -> TokenStats | None:
    """Per-token logprob, entropy and margin from a choice's ``logprobs`` object (either
    shape); None when the server sent none (or an unreadable one)."""
    if not isinstance(logprobs, dict):
        return None
    pairs: list[tuple[Any, Any]]
    if "content" in logprobs:  # chat shape
        content = logprobs.get("content") or []
        pairs = [(t.get("logprob"), t.get("top_logprobs")) for t in content if isinstance(t, dict)]
    elif "token_logprobs" in logprobs:  # legacy completions shape
        chosen = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        pairs = [(lp, tops[i] if i < len(tops) else None) for i, lp in enumerate(chosen)]
    else:
        return None
    stats = TokenStats([], [], [])
    for chosen_lp, top in pairs:
        if not isinstance(chosen_lp, int | float):
            continue  # an echoed prompt's first token has no logprob
        values = top_values(top) or [float(chosen_lp)]
        stats.logprobs.append(float(chosen_lp))
        stats.entropies.append(entropy(values))
        stats.margins.append(margin(values))
    return stats


def choice_text(choice: dict[str, Any], *, chat: bool, delta: bool = False) -> str:
    """The generated text of a choice: ``message.content`` (chat), ``delta.content`` (a chat
    stream chunk) or ``text`` (completions); "" when absent or null."""
    if chat:
        part = choice.get("delta" if delta else "message") or {}
        text = part.get("content") if isinstance(part, dict) else None
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else ""


def finish_reason(choice: dict[str, Any]) -> FinishReason:
    """``length`` when the token limit (or the context) cut the answer, ``tool_calls`` when
    the model called tools, else ``stop`` (EOS, a stop string, or a server-specific reason
    such as ``eos``)."""
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length"
    if reason in ("tool_calls", "function_call"):
        return "tool_calls"
    return "stop"


def tool_calls_of(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool calls of a chat choice's message, as the server sent them (None when it
    made none)."""
    message = choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    return [c for c in calls if isinstance(c, dict)] or None


def client_logprobs(logprobs: Any, top: int) -> dict[str, Any] | None:
    """A choice's ``logprobs`` object for the client, with at most ``top`` alternatives per
    token (the router may have asked the server for more); None when there was none."""
    if not isinstance(logprobs, dict):
        return None
    out = dict(logprobs)
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = [_trim_top(t, top) for t in content]
    tops = out.get("top_logprobs")
    if isinstance(tops, list):
        out["top_logprobs"] = [_trim_legacy(t, top) for t in tops]
    return out


def _trim_top(token: Any, top: int) -> Any:
    if isinstance(token, dict) and isinstance(token.get("top_logprobs"), list):
        return {**token, "top_logprobs": token["top_logprobs"][:top]}
    return token


def _trim_legacy(alternatives: Any, top: int) -> Any:
    if isinstance(alternatives, dict):
        best = sorted(alternatives.items(), key=lambda kv: -float(kv[1] or 0.0))[:top]
        return dict(best)
    return alternatives


def usage_int(usage: Any, key: str) -> int | None:
    """``usage[key]`` as a non-negative int, or None when the server did not report it."""
    if isinstance(usage, dict) and isinstance(usage.get(key), int) and usage[key] >= 0:
        return int(usage[key])
    return None


def split_total(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` tokens over choices in proportion to ``weights`` (largest remainder,
    ties to the earlier choice), so the parts sum to ``total``; evenly when all weights
    are 0."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    scale = sum(weights)
    exact = [total * w / scale for w in weights]
    parts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) when neither usage, logprobs nor a
    tokenizer can say; marked as inexact by ``Capabilities.exact_token_counts``."""
    return math.ceil(len(text) / 4)


def completions_from(
    data: dict[str, Any],
    *,
    chat: bool,
    want_logprobs: bool,
    count_text: TextCounter,
    client_top: int | None = None,
) -> list[Completion]:
    """The completions of one non-streaming response, ordered by choice index.

    Token counts: the usage total when there is one choice; with several (a native ``n``)
    the usage total split in proportion to each choice's logprob count, else to the local
    tokenizer's count of its text, else evenly. Without usage the per-choice counts
    themselves are used (or an estimate).
    """
    raw = data.get("choices")
    choices = sorted(
        (c for c in raw if isinstance(c, dict)) if isinstance(raw, list) else [],
        key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0,
    )
    comps: list[Completion] = []
    for choice in choices:
        raw_logprobs = choice.get("logprobs")
        stats = token_stats(raw_logprobs) if want_logprobs else None
        comps.append(
            Completion(
                text=choice_text(choice, chat=chat),
                tokens=0,
                finish_reason=finish_reason(choice),
                token_logprobs=stats.logprobs if stats else None,
                token_entropies=stats.entropies if stats else None,
                token_margins=stats.margins if stats else None,
                tool_calls=tool_calls_of(choice) if chat else None,
                logprobs=(
                    client_logprobs(raw_logprobs, client_top) if client_top is not None else None
                ),
            )
        )
    counts = _per_choice_counts(comps, count_text)
    total = usage_int(data.get("usage"), "completion_tokens")
    if total is not None:
        counts = [total] if len(comps) == 1 else split_total(total, counts or [0] * len(comps))
    for comp, count in zip(comps, counts or [], strict=False):
        comp.tokens = count
    if counts is None:
        for comp in comps:
            comp.tokens = estimate_tokens(comp.text)
    return comps


def _per_choice_counts(comps: list[Completion], count_text: TextCounter) -> list[int] | None:
    """Each completion's own token count: its logprob count when every choice has them,
    else the local tokenizer's count, else None."""
    if comps and all(c.token_logprobs is not None for c in comps):
        return [len(c.token_logprobs or []) for c in comps]
    local = [count_text(c.text) for c in comps]
    if comps and all(n is not None for n in local):
        return [int(n or 0) for n in local]
    return None


def server_error_detail(body: str) -> str:
    """The human part of an error body: ``error.message``, ``error`` (a string), ``detail``
    or ``message`` of a JSON body, else the body itself; whitespace collapsed."""
    detail: Any = body
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            detail = err["message"]
        elif isinstance(err, str) and err:
            detail = err
        elif data.get("detail"):
            detail = data["detail"]
        elif data.get("message"):
            detail = data["message"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return " ".join(text.split())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty ``secrets`` string (upstream URLs, host:port, the API
    key) replaced by ``<model server>``, and any other URL, address, path or exception repr
    the server's text names removed (``backends.redaction``): upstream addresses and
    internals must never reach clients."""
    return redact(text, secrets)


def refusal_message(
    status: int, body: str, secrets: Iterable[str], *, refused: bool = False
) -> str:
    """A client-safe message for an upstream HTTP error: the status and the server's own
    message (truncated to ``MAX_ERROR_CHARS``), with no URL or internals."""
    detail = scrub(server_error_detail(body), secrets)
    if len(detail) > MAX_ERROR_CHARS:
        detail = detail[: MAX_ERROR_CHARS - 3] + "..."
    what = "refused the request" if status < 500 or refused else "failed"
    return f"the model server {what} ({status})" + (f": {detail}" if detail else "")
