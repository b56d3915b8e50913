"""Finding out what an OpenAI-compatible server can do, by asking it tiny questions.

``discover()`` sends a handful of 1-token requests (the servers differ: llama-cpp-python
ignores ``n`` and needs ``top_logprobs`` for chat logprobs, vLLM has both, llama.cpp's native
server renders chat templates on ``/apply-template``, vLLM on ``/tokenize`` + ``/detokenize``)
and reports what answered; ``OpenAIHTTPBackend.start`` turns that into ``Capabilities``.
Nothing is keyed on a server's name: every fact comes from a response.

``ServerTemplate`` renders chat messages with the server's own template endpoint, for a
backend that has no local tokenizer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from backends.base import Capabilities
from backends.openai_parse import token_stats, usage_int

PROBE_MESSAGES = [{"role": "user", "content": "Hi"}]
#: a prompt with a long answer, and the tokens of it timed to measure decode speed
SPEED_MESSAGES = [{"role": "user", "content": "Count from one to fifty in words."}]
SPEED_TOKENS = 16
SPEED_TOP_LOGPROBS = 5
#: logprobs that slow decoding by at most this factor count as free
FREE_LOGPROBS_SLOWDOWN = 1.5
#: how long the reachability check may take before the server counts as down
CONNECT_CHECK_S = 3.0


class Unreachable(Exception):
    """The server did not answer at all (connection refused, timeout, dropped connection)."""


@dataclass
class Upstream:
    """Where and how to reach one server: the ``/v1`` base, the root beneath it (template
    and tokenizer endpoints live there), the model id, headers, extra body fields, timeout."""

    client: httpx.AsyncClient
    base_url: str
    root_url: str
    model: str
    headers: dict[str, str]
    extra_body: dict[str, Any]
    timeout_s: float

    async def post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST ``body`` (with ``extra_body`` under it) and return the JSON object of a 200
        answer, None for any other status or a non-object body; raises ``Unreachable`` when
        the server did not answer."""
        try:
            resp = await self.client.post(
                url, json={**self.extra_body, **body}, headers=self.headers, timeout=self.timeout_s
            )
        except httpx.TransportError as exc:
            raise Unreachable(type(exc).__name__) from exc
        return json_object(resp)

    async def get_json(self, url: str) -> dict[str, Any] | None:
        """GET ``url``: the JSON object of a 200 answer, else None (``Unreachable`` when
        the server did not answer)."""
        try:
            resp = await self.client.get(url, headers=self.headers, timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise Unreachable(type(exc).__name__) from exc
        return json_object(resp)


def json_object(resp: httpx.Response) -> dict[str, Any] | None:
    """The JSON object of a 200 answer, None for any other status or body."""
    if resp.status_code != 200:
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class ServerTemplate:
    """A chat template the server renders: ``apply-template`` (llama.cpp's native server:
    messages in, prompt text out) or ``tokenize`` (vLLM: messages to token ids, then ids to
    text). ``strip_bos_id`` is the BOS id to drop from rendered ids because the server adds it
    to every raw prompt by itself (else the continuation would start with two)."""

    upstream: Upstream
    kind: Literal["apply-template", "tokenize"]
    strip_bos_id: int | None = None

    async def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages`` with the generation prompt appended; raises
        ``Unreachable`` (no answer) or ``ValueError`` (the server refused or answered
        nonsense)."""
        up = self.upstream
        if self.kind == "apply-template":
            data = await up.post_json(f"{up.root_url}/apply-template", {"messages": messages})
            prompt = data.get("prompt") if data else None
        else:
            tokens = await _chat_token_ids(up, messages)
            if tokens and self.strip_bos_id is not None and tokens[0] == self.strip_bos_id:
                tokens = tokens[1:]
            data = await up.post_json(
                f"{up.root_url}/detokenize", {"model": up.model, "tokens": tokens}
            )
            prompt = data.get("prompt") if data else None
        if not isinstance(prompt, str):
            raise ValueError(f"the model server's {self.kind} endpoint did not render the chat")
        return prompt


@dataclass
class Discovery:
    """What the probes found; None where a probe was skipped (the value is declared)."""

    reachable: bool
    native_n: bool | None = None
    chat_logprobs: bool | None = None
    completions: bool | None = None
    completions_logprobs: bool | None = None
    usage: bool = False
    template: ServerTemplate | None = None
    #: decode time with logprobs over without (None: not measured)
    logprobs_slowdown: float | None = None
    #: requests the server decodes side by side (None: not known)
    parallel_slots: int | None = None
    #: the most choices one call may ask for (llama.cpp: its slots; None: no bound known)
    max_n: int | None = None

    def summary(self) -> str:
        """One log-friendly line: ``native_n=no chat_logprobs=yes ...``."""
        if not self.reachable:
            return "unreachable"

        def word(value: bool | None) -> str:
            return "declared" if value is None else ("yes" if value else "no")

        return (
            f"native_n={word(self.native_n)} chat_logprobs={word(self.chat_logprobs)} "
            f"completions={word(self.completions)} "
            f"completions_logprobs={word(self.completions_logprobs)} usage={word(self.usage)} "
            f"server_template={self.template.kind if self.template else 'none'} "
            f"logprobs_slowdown={self.logprobs_slowdown or 'unmeasured'} "
            f"parallel_slots={self.parallel_slots or 'unknown'}"
        )


def capabilities_from(
    found: Discovery | None, declared: Mapping[str, bool | int], local: bool, concurrency: int
) -> Capabilities:
    """``Capabilities`` from what discovery ``found``, with ``declared`` values on top.

    ``local`` says a local tokenizer with the chat template is loaded (a template and exact
    counts without asking the server). A server not reached (``found`` None or unreachable)
    gets conservative values: fan out, no logprobs, no raw completions. ``logprobs`` needs
    them on chat and, when it exists, on the completions endpoint too.
    """
    values: dict[str, bool | int] = {
        "native_n": False,
        "logprobs": False,
        "completions": False,
        "chat_template": local,
        "exact_token_counts": local,
        "forwards_fields": True,
        "parallel_slots": concurrency,
    }
    if found is not None and found.reachable:
        completions = bool(found.completions)
        values.update(
            native_n=bool(found.native_n),
            logprobs=bool(found.chat_logprobs)
            and (not completions or bool(found.completions_logprobs)),
            completions=completions,
            chat_template=local or found.template is not None,
            exact_token_counts=local or found.usage,
        )
        if found.logprobs_slowdown is not None:
            values["free_logprobs"] = found.logprobs_slowdown <= FREE_LOGPROBS_SLOWDOWN
        if found.parallel_slots is not None:
            values["parallel_slots"] = min(found.parallel_slots, concurrency)
        if found.max_n is not None:
            values["max_n"] = found.max_n
    values.update(declared)
    values["max_concurrency"] = concurrency
    return Capabilities.model_validate(values)


async def discover(up: Upstream, *, skip: set[str], want_template: bool) -> Discovery:
    """Probe the server behind ``up`` with 1-2 token requests.

    ``skip`` holds ``Capabilities`` field names fixed by config (their probes are not sent);
    ``want_template`` asks for a server-side template endpoint (when there is no local one).
    Returns a ``Discovery``; ``reachable`` False when the server did not answer at all (then
    nothing else is known). Never raises for a server that answers with errors: a probe
    that is refused just means the feature is missing.
    """
    try:
        await up.client.get(f"{up.base_url}/models", headers=up.headers, timeout=CONNECT_CHECK_S)
        found = Discovery(reachable=True)
        chat_url = f"{up.base_url}/chat/completions"
        if "native_n" not in skip:
            body = {"messages": PROBE_MESSAGES, "n": 2, "temperature": 1.0, "max_tokens": 1}
            data = await up.post_json(chat_url, {"model": up.model, **body})
            found.native_n = _choice_count(data) >= 2
            found.usage |= usage_int((data or {}).get("usage"), "completion_tokens") is not None
        if "logprobs" not in skip:
            body = {"messages": PROBE_MESSAGES, "max_tokens": 2, "temperature": 0.0}
            data = await up.post_json(
                chat_url, {"model": up.model, **body, "logprobs": True, "top_logprobs": 2}
            )
            found.chat_logprobs = _has_logprobs(data)
            found.usage |= usage_int((data or {}).get("usage"), "completion_tokens") is not None
        if "completions" not in skip or "logprobs" not in skip:
            await _probe_completions(up, found, logprobs="logprobs" not in skip)
        if want_template:
            found.template = await find_server_template(up)
        if "free_logprobs" not in skip and found.chat_logprobs:
            found.logprobs_slowdown = await logprobs_slowdown(up)
        if "parallel_slots" not in skip:
            found.max_n = await props_slots(up)
            found.parallel_slots = found.max_n or await measured_slots(up)
        return found
    except (Unreachable, httpx.TransportError):
        return Discovery(reachable=False)


async def _probe_completions(up: Upstream, found: Discovery, *, logprobs: bool) -> None:
    """Whether ``/completions`` takes raw prompts (and returns logprobs); fills ``found``.
    A server that refuses logprobs but serves the prompt still has the endpoint."""
    url = f"{up.base_url}/completions"
    body: dict[str, Any] = {"model": up.model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    data = await up.post_json(url, {**body, "logprobs": 2} if logprobs else body)
    if logprobs:
        found.completions_logprobs = _has_logprobs(data)
        if data is None:
            data = await up.post_json(url, body)
    found.completions = data is not None and _choice_count(data) >= 1
    found.usage |= usage_int((data or {}).get("usage"), "completion_tokens") is not None


async def find_server_template(up: Upstream) -> ServerTemplate | None:
    """The server's own chat-template endpoint, tried in turn: ``POST /apply-template``
    (llama.cpp), then ``POST /tokenize`` with messages + ``/detokenize`` (vLLM). Returns a
    ``ServerTemplate`` whose rendering of a probe conversation contains the probe text, or
    None when the server has neither."""
    for kind in ("apply-template", "tokenize"):
        candidate = ServerTemplate(up, kind)  # type: ignore[arg-type]
        if kind == "tokenize":
            candidate.strip_bos_id = await _added_bos_id(up)
        try:
            rendered = await candidate.render(PROBE_MESSAGES)
        except ValueError:
            continue
        if PROBE_MESSAGES[0]["content"] in rendered:
            return candidate
    return None


async def _chat_token_ids(up: Upstream, messages: list[dict[str, str]]) -> list[int] | None:
    """Token ids of ``messages`` rendered by the server's template (vLLM ``/tokenize``)."""
    data = await up.post_json(
        f"{up.root_url}/tokenize",
        {"model": up.model, "messages": messages, "add_generation_prompt": True},
    )
    tokens = data.get("tokens") if data else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        return None
    return tokens


async def _added_bos_id(up: Upstream) -> int | None:
    """The token id the server puts in front of every raw prompt (BOS), or None when it
    adds nothing: ``/tokenize`` of the same text with and without special tokens."""
    url = f"{up.root_url}/tokenize"
    with_special = await up.post_json(
        url, {"model": up.model, "prompt": "Hi", "add_special_tokens": True}
    )
    plain = await up.post_json(
        url, {"model": up.model, "prompt": "Hi", "add_special_tokens": False}
    )
    a = with_special.get("tokens") if with_special else None
    b = plain.get("tokens") if plain else None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) + 1 and a[1:] == b:
        return a[0] if isinstance(a[0], int) else None
    return None


async def _timed_chat(up: Upstream, extra: dict[str, Any]) -> float | None:
    """Seconds per generated token of one greedy ``SPEED_TOKENS``-token chat answer (None
    when the server refused it or generated nothing)."""
    body = {
        "model": up.model,
        "messages": SPEED_MESSAGES,
        "max_tokens": SPEED_TOKENS,
        "temperature": 0.0,
        **extra,
    }
    t0 = time.perf_counter()
    data = await up.post_json(f"{up.base_url}/chat/completions", body)
    elapsed = time.perf_counter() - t0
    tokens = usage_int((data or {}).get("usage"), "completion_tokens")
    if data is None or not tokens:
        return None
    return elapsed / tokens


async def logprobs_slowdown(up: Upstream) -> float | None:
    """How much slower the server decodes with ``top_logprobs`` than without: the better of
    two timed answers each way (llama-cpp-python: about 4.5; llama.cpp's own server: 1)."""
    plain = [await _timed_chat(up, {}) for _ in range(2)]
    with_lp = [
        await _timed_chat(up, {"logprobs": True, "top_logprobs": SPEED_TOP_LOGPROBS})
        for _ in range(2)
    ]
    a = [x for x in plain if x]
    b = [x for x in with_lp if x]
    if not a or not b:
        return None
    return round(min(b) / min(a), 2)


async def props_slots(up: Upstream) -> int | None:
    """llama.cpp's slots (``/props``' ``total_slots``): requests it decodes side by side,
    and the most choices (``n``) one request may ask for. None from other servers."""
    props = await up.get_json(f"{up.root_url}/props")
    slots = props.get("total_slots") if props else None
    return slots if isinstance(slots, int) and slots >= 1 else None


async def measured_slots(up: Upstream) -> int | None:
    """Whether the server serialises requests: two concurrent timed answers against one
    (1 when they take twice as long; None: no bound known)."""
    alone = await _timed_chat(up, {})
    t0 = time.perf_counter()
    pair = await asyncio.gather(_timed_chat(up, {}), _timed_chat(up, {}))
    together = time.perf_counter() - t0
    if alone is None or None in pair:
        return None
    # Two answers side by side take about as long as one; one after another, twice as long.
    return 1 if together > 1.6 * alone * SPEED_TOKENS else None


def _choice_count(data: dict[str, Any] | None) -> int:
    choices = (data or {}).get("choices")
    return len(choices) if isinstance(choices, list) else 0


def _has_logprobs(data: dict[str, Any] | None) -> bool:
    """Whether the first choice carries readable per-token logprobs."""
    choices = (data or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    stats = token_stats(choices[0].get("logprobs"))
    return bool(stats and stats.logprobs)
