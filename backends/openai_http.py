"""An OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp) as a ``Backend``.

Raw prompts go to ``/completions`` and chat requests to ``/chat/completions``. Per-token
entropies are estimated from the top-k log-probabilities the server returns (renormalised
over the k shown), which is what the difficulty probe needs. A circuit breaker stops
hammering a server that keeps failing, so the router can fall back quickly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
)

TOP_LOGPROBS = 5


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures and stays open ``cooldown_s`` seconds.

    While open, ``allow()`` is False except for one probe request per cooldown window
    (half-open); a success closes it again.
    """

    def __init__(self, threshold: int = 5, cooldown_s: float = 10.0, clock: Any = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None

    def allow(self) -> bool:
        """Whether a request may go to the server now."""
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.cooldown_s:
            self.opened_at = self.clock()  # half-open: let one request probe
            return True
        return False

    def record(self, ok: bool) -> None:
        """Count a success (closes the breaker) or a failure (may open it)."""
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()


def _entropy_from_top(top: dict[str, float] | list[dict[str, Any]] | None) -> float:
    """Entropy (nats) of the top-k distribution, renormalised; 0 when nothing was given."""
    if not top:
        return 0.0
    values = list(top.values()) if isinstance(top, dict) else [t["logprob"] for t in top]
    probs = [math.exp(v) for v in values]
    z = sum(probs)
    if z <= 0:
        return 0.0
    return -sum((p / z) * math.log(p / z) for p in probs if p > 0)


class OpenAIHTTPBackend(Backend):
    """Forwards generation to an OpenAI-compatible server at ``base_url`` (ending in /v1)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.AsyncClient | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self.breaker = breaker or CircuitBreaker()

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """A plain ``role: content`` rendering; the server's own template is not visible here.

        Step-level search over an HTTP backend therefore continues raw prompts in this
        format; chat requests themselves go through ``/chat/completions`` unchanged.
        """
        lines = [f"{m.role}: {m.content}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """POST the request; raises ``BackendError`` (retryable for 5xx/timeouts)."""
        if not self.breaker.allow():
            raise BackendError(f"circuit open for {self.base_url}: too many recent failures")
        body: dict[str, Any] = {
            "model": self.name,
            "n": request.n,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        chat = request.messages is not None
        if chat:
            body["messages"] = [m.model_dump() for m in request.messages or []]
            if request.logprobs:
                body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            body["prompt"] = request.prompt
            if request.logprobs:
                body["logprobs"] = TOP_LOGPROBS
        url = f"{self.base_url}/{'chat/completions' if chat else 'completions'}"
        try:
            resp = await self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            self.breaker.record(False)
            raise BackendError(f"{url} unreachable: {exc.__class__.__name__}: {exc}") from exc
        if resp.status_code >= 500:
            self.breaker.record(False)
            raise BackendError(f"{url} answered {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            self.breaker.record(True)  # the server is healthy; the request was refused
            raise BackendError(
                f"{url} refused the request ({resp.status_code}): {resp.text[:200]}",
                retryable=False,
            )
        self.breaker.record(True)
        return self._parse(resp.json(), chat=chat, want_logprobs=request.logprobs)

    def _parse(self, data: dict[str, Any], *, chat: bool, want_logprobs: bool) -> GenerationResult:
        comps: list[Completion] = []
        usage = data.get("usage") or {}
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        for choice in choices:
            text = (choice.get("message") or {}).get("content", "") if chat else choice["text"]
            lps: list[float] | None = None
            ents: list[float] | None = None
            lp = choice.get("logprobs")
            if want_logprobs and lp:
                if chat:
                    content = lp.get("content") or []
                    lps = [t["logprob"] for t in content]
                    ents = [_entropy_from_top(t.get("top_logprobs")) for t in content]
                else:
                    lps = [x for x in lp.get("token_logprobs") or [] if x is not None]
                    ents = [_entropy_from_top(t) for t in lp.get("top_logprobs") or []]
            # Servers report tokens per request, not per choice; split evenly when needed.
            n_tokens = len(lps) if lps else None
            comps.append(
                Completion(
                    text=text or "",
                    tokens=n_tokens if n_tokens is not None else 0,
                    finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                    token_logprobs=lps,
                    token_entropies=ents,
                )
            )
        total = int(usage.get("completion_tokens", 0))
        known = sum(c.tokens for c in comps)
        if comps and known == 0 and total:
            share, extra = divmod(total, len(comps))
            for i, c in enumerate(comps):
                c.tokens = share + (1 if i < extra else 0)
        return GenerationResult(
            completions=comps,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            model=str(data.get("model", self.name)),
        )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self.client.aclose()
