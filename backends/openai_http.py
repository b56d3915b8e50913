"""Any OpenAI-compatible model server (vLLM, SGLang, llama.cpp, llama-cpp-python) as a
``Backend``.

The servers differ in what they support, so nothing is assumed per server: ``start()`` asks
the server with 1-token probes (``backends/openai_discovery.py``) whether it samples ``n``
choices natively, returns logprobs on chat and raw completions, has a raw completions
endpoint and a chat-template endpoint, and reports usage. Config can fix any of those
(``declared``). The answers become ``capabilities``, and ``generate`` adapts: without native
``n`` it fans out ``n`` single-sample calls, each with its own seed.

Chat requests go to ``/chat/completions`` and raw prompts to ``/completions``; streaming uses
SSE. Per token it returns the logprob, the entropy of the renormalised top-k and the top-1
vs top-2 margin. Upstream errors become ``BackendError`` whose messages never contain the
server's address. A circuit breaker (``backends/breaker.py``) stops calls to a server that
keeps failing and tells callers when to come back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from backends.base import (
    Backend,
    BackendError,
    Capabilities,
    ChatMessage,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from backends.breaker import CircuitBreaker
from backends.chat_template import ChatTemplate
from backends.openai_discovery import (
    Discovery,
    Unreachable,
    Upstream,
    capabilities_from,
    discover,
)
from backends.openai_parse import (
    TOP_LOGPROBS,
    completions_from,
    scrub,
    usage_int,
)
from backends.openai_stream import StreamAccumulator
from backends.openai_transport import Transport

__all__ = ["CircuitBreaker", "OpenAIHTTPBackend"]

log = logging.getLogger("acr.backends.openai")

#: after a failed discovery (server down at start), retry at most this often
REDISCOVER_EVERY_S = 5.0
#: readiness: GET /models may take this long (a serializing server answers it only after
#: the generation in progress, so allow a few seconds, but never hang a health check)
READY_TIMEOUT_S = 5.0
NO_TEMPLATE = (
    "continuing a partial answer needs the model's chat template, and neither a local "
    "tokenizer nor the model server provides one; set model.tokenizer_path in the config to "
    "a local tokenizer directory or the model's .gguf file"
)


class OpenAIHTTPBackend(Backend):
    """A model behind an OpenAI-compatible HTTP API at ``base_url`` (usually ending in /v1).

    ``name`` is the model name clients see; ``served_name`` the id sent upstream (default
    ``name``). ``declared`` fixes ``Capabilities`` fields by config (not probed);
    ``template`` is the model's local ``ChatTemplate`` (rendering and exact token counts);
    ``extra_body`` is merged under every upstream request body (e.g. ``{"repeat_penalty":
    1.0}`` for llama.cpp); ``max_concurrency`` caps upstream calls in flight. Call ``start()``
    once before serving (``generate`` discovers lazily otherwise).
    """

    def __init__(
        self,
        base_url: str,
        name: str,
        *,
        served_name: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.AsyncClient | None = None,
        breaker: CircuitBreaker | None = None,
        declared: Mapping[str, bool | int] | None = None,
        template: ChatTemplate | None = None,
        extra_body: Mapping[str, Any] | None = None,
        max_concurrency: int = 4,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        unknown = set(declared or {}) - set(Capabilities.model_fields)
        if unknown:
            raise ValueError(
                f"unknown capabilities {sorted(unknown)}; "
                f"valid: {sorted(Capabilities.model_fields)}"
            )
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.name = name
        self.served_name = served_name or name
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.client = client or httpx.AsyncClient(timeout=timeout_s)
        self.breaker = breaker or CircuitBreaker()
        self.declared: dict[str, bool | int] = dict(declared or {})
        self.template = template
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Anything that would reveal the upstream (or the key) if a server echoed it.
        where = urlsplit(self.base_url)
        self._secrets = [self.base_url, self.root_url, where.netloc, where.hostname or ""]
        self._secrets += [api_key] if api_key else []
        self._transport = Transport(
            self.client,
            base_url=self.base_url,
            headers=self._headers,
            secrets=self._secrets,
            timeout_s=timeout_s,
            breaker=self.breaker,
        )
        concurrency = int(self.declared.get("max_concurrency", max_concurrency))
        self._slots = asyncio.Semaphore(concurrency)
        self._discovery: Discovery | None = None
        self._discovered_at: float | None = None
        self._discovery_lock = asyncio.Lock()
        self.capabilities = self._compose(None, concurrency)

    # ------------------------------------------------------------------ capabilities

    def _compose(self, found: Discovery | None, concurrency: int) -> Capabilities:
        """``capabilities_from`` this backend's template, ``declared`` and ``concurrency``."""
        return capabilities_from(found, self.declared, self.template is not None, concurrency)

    async def start(self) -> None:
        """Discover the capabilities not declared (a few 1-token requests) and log them.

        Never raises for an unreachable server: the capabilities stay conservative and
        discovery is retried by later calls (at most every ``REDISCOVER_EVERY_S``).
        """
        await self._discover(force=True)

    async def _discover(self, *, force: bool = False) -> None:
        """Run discovery unless it already succeeded or (without ``force``) was tried in
        the last ``REDISCOVER_EVERY_S``; concurrent callers wait for one run."""
        if self._discovery is not None and self._discovery.reachable:
            return  # the common case, without touching the lock
        async with self._discovery_lock:
            if self._discovery is not None and self._discovery.reachable:
                return
            now = self.breaker.clock()
            recent = self._discovered_at is not None and now - self._discovered_at < (
                REDISCOVER_EVERY_S
            )
            if recent and not force:
                return
            self._discovered_at = now
            found = await discover(
                self._upstream(min(self.timeout_s, 30.0)),
                skip=set(self.declared),
                want_template=self.template is None,
            )
            self._discovery = found
            self.capabilities = self._compose(found, self.capabilities.max_concurrency)
            caps = self.capabilities.model_dump()
            if found.reachable:
                log.info(
                    "model server for %r: probed %s; capabilities %s (declared: %s)",
                    self.name,
                    found.summary(),
                    caps,
                    sorted(self.declared) or "none",
                )
            else:
                log.warning(
                    "model server for %r unreachable at discovery; conservative "
                    "capabilities %s until it answers",
                    self.name,
                    caps,
                )

    def _upstream(self, timeout_s: float) -> Upstream:
        return Upstream(
            client=self.client,
            base_url=self.base_url,
            root_url=self.root_url,
            model=self.served_name,
            headers=self._headers,
            extra_body=self.extra_body,
            timeout_s=timeout_s,
        )

    def _sends_logprobs(self, chat: bool) -> bool:
        """Whether to ask this endpoint for logprobs: unless config or discovery said it
        cannot (unknown counts as yes: the caller asked for them)."""
        if "logprobs" in self.declared:
            return bool(self.declared["logprobs"])
        found = self._discovery
        known = (
            None if found is None else (found.chat_logprobs if chat else found.completions_logprobs)
        )
        return known is not False

    # ------------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Sample ``request.n`` completions: natively, or by fanning out ``n`` concurrent
        single-sample calls (then fewer may come back if some calls fail; if all fail this
        raises). Raises ``BackendError``: retryable for 5xx, timeouts, unreachable or an open
        breaker (with ``retry_after_s``), not retryable when the server refused the request.
        """
        probe = self.breaker.check()
        try:
            await self._discover()
            if request.n > 1 and not self.capabilities.native_n:
                return await self._fan_out(request)
            limit = self.capabilities.max_n
            if limit is not None and request.n > limit:
                return await self._fan_out(request, per_call=limit)
            return await self._call(request, n=request.n, seed=request.seed)
        finally:
            self.breaker.release(probe)

    async def _call(
        self, request: GenerationRequest, *, n: int, seed: int | None
    ) -> GenerationResult:
        """One upstream call for ``n`` choices; returns them with usage-based counts."""
        chat = request.messages is not None
        body = self._body(request, n=n, seed=seed, chat=chat)
        started = time.perf_counter()
        async with self._slots:
            data = await self._transport.post(self._endpoint(chat), body)
        elapsed_ms = (time.perf_counter() - started) * 1000
        comps = completions_from(
            data,
            chat=chat,
            want_logprobs=request.logprobs,
            count_text=self._count_generated,
            client_top=request.top_logprobs,
        )
        if not comps:
            raise BackendError("the model server answered without any completion")
        prompt_tokens = usage_int(data.get("usage"), "prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = self._local_prompt_tokens(request) or 0
        return GenerationResult(
            completions=comps,
            prompt_tokens=prompt_tokens,
            model=self.name,
            timings_ms={"upstream": elapsed_ms},
        )

    async def _fan_out(self, request: GenerationRequest, per_call: int = 1) -> GenerationResult:
        """``request.n`` choices from concurrent calls of at most ``per_call`` each
        (``max_concurrency`` in flight), each with its own seeds, merged; prompt tokens
        counted once. Partial failure returns the survivors."""
        sizes = [min(per_call, request.n - i) for i in range(0, request.n, per_call)]
        # a server numbers a call's choices from its seed: calls start per_call apart
        seeds = fan_out_seeds(request.seed, request.n, request.temperature)[::per_call]
        outcomes = await asyncio.gather(
            *(self._call(request, n=k, seed=s) for k, s in zip(sizes, seeds, strict=True)),
            return_exceptions=True,
        )
        results = [r for r in outcomes if isinstance(r, GenerationResult)]
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        for error in errors:
            if not isinstance(error, BackendError):
                raise error  # a bug or a cancellation, not a server failure
        backend_errors = [e for e in errors if isinstance(e, BackendError)]
        if not results:
            refused = [e for e in backend_errors if not e.retryable]
            first = (refused or backend_errors)[0]
            raise BackendError(
                f"all {len(seeds)} sampling calls failed; first: {first}",
                retryable=not refused,
                retry_after_s=first.retry_after_s,
                status=first.status,
            ) from first
        if backend_errors:
            log.warning(
                "%d of %d sampling calls to %r failed (first: %s)",
                len(backend_errors),
                len(seeds),
                self.name,
                backend_errors[0],
            )
        return GenerationResult(
            completions=[c for r in results for c in r.completions],
            prompt_tokens=results[0].prompt_tokens,
            model=self.name,
            timings_ms={
                "upstream": max(r.timings_ms.get("upstream", 0.0) for r in results),
                "fanout_calls": float(len(seeds)),
                "fanout_failed": float(len(backend_errors)),
            },
        )

    def _endpoint(self, chat: bool) -> str:
        return f"{self.base_url}/{'chat/completions' if chat else 'completions'}"

    def _body(
        self,
        request: GenerationRequest,
        *,
        n: int,
        seed: int | None,
        chat: bool,
        stream: bool = False,
    ) -> dict[str, Any]:
        """The upstream JSON body: ``extra_body`` (config), then the client's fields the
        router does not act on (``request.params``), then the router's own (model, n, seed,
        messages), which always win."""
        body: dict[str, Any] = {
            **self.extra_body,
            **request.params,
            "model": self.served_name,
            "n": n,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = request.stop
        if seed is not None:
            body["seed"] = seed
        # The client's own logprob fields are in ``params`` as it sent them; the router
        # asks for more alternatives only where it reads them itself (its probe).
        want_logprobs = request.logprobs and self._sends_logprobs(chat)
        top = max(TOP_LOGPROBS, request.top_logprobs or 0)
        if chat:
            body["messages"] = [m.wire() for m in request.messages or []]
            if want_logprobs:  # some servers ignore logprobs=true without top_logprobs
                body.update(logprobs=True, top_logprobs=top)
        else:
            body["prompt"] = request.prompt
            if want_logprobs:
                body["logprobs"] = top
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    # ------------------------------------------------------------------ streaming

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream one completion: a ``StreamDelta(text=...)`` per content chunk as it
        arrives, then ``StreamDelta(completion=..., prompt_tokens=...)``. ``request.n`` must
        be 1. Errors as in ``generate`` (a stream cut off midway is retryable)."""
        if request.n != 1:
            raise BackendError("streaming returns one completion; ask for n=1", retryable=False)
        probe = self.breaker.check()
        try:
            await self._discover()
            chat = request.messages is not None
            body = self._body(request, n=1, seed=request.seed, chat=chat, stream=True)
            acc = StreamAccumulator(
                chat=chat, want_logprobs=request.logprobs, client_top=request.top_logprobs
            )
            async with self._slots:
                async for piece in self._transport.stream_deltas(self._endpoint(chat), body, acc):
                    yield piece
            completion, prompt_tokens = acc.finish(self._count_generated)
            if prompt_tokens is None:
                prompt_tokens = self._local_prompt_tokens(request) or 0
            yield StreamDelta(completion=completion, prompt_tokens=prompt_tokens)
        finally:
            self.breaker.release(probe)

    # ------------------------------------------------------------------ templates, tokens

    async def render_chat(self, messages: list[ChatMessage]) -> str:
        """The model's prompt text for ``messages`` (generation prompt appended), from the
        local ``template`` or the server's template endpoint found at start. Raises a
        non-retryable ``BackendError`` naming ``model.tokenizer_path`` when there is none."""
        turns = [{"role": m.role, "content": m.text} for m in messages]
        if self.template is not None:
            return self._render_locally(self.template, turns)
        await self._discover()
        server_template = self._discovery.template if self._discovery else None
        if server_template is None:
            raise BackendError(NO_TEMPLATE, retryable=False)
        try:
            return await server_template.render(turns)
        except Unreachable as exc:
            raise BackendError(f"the model server is unreachable ({exc})") from exc
        except ValueError as exc:
            raise BackendError(scrub(str(exc), self._secrets), retryable=False) from exc

    def _render_locally(self, template: ChatTemplate, turns: list[dict[str, str]]) -> str:
        try:
            text = template.render(turns)
        except ValueError as exc:
            detail = scrub(str(exc), [*self._secrets, template.source])
            raise BackendError(detail, retryable=False) from exc
        bos = template.bos_token
        # A server that adds BOS to raw prompts by itself would otherwise see it twice.
        if bos and text.startswith(bos) and template.adds_bos:
            text = text[len(bos) :]
        return text

    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` is as a raw prompt (with the BOS a server would add), from the
        local tokenizer; None without one."""
        return None if self.template is None else self.template.count_tokens(text)

    def _count_generated(self, text: str) -> int | None:
        """Tokens of generated ``text`` (no BOS), from the local tokenizer, else None."""
        if self.template is None:
            return None
        return self.template.count_tokens(text, add_special_tokens=False)

    def _local_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """The prompt's token count from the local tokenizer when usage was missing."""
        if self.template is None:
            return None
        if request.prompt is not None:
            return self.template.count_tokens(request.prompt)
        turns = [{"role": m.role, "content": m.text} for m in request.messages or []]
        try:
            return self.template.count_tokens(self.template.render(turns))
        except ValueError:
            return None

    # ------------------------------------------------------------------ health

    async def ready(self) -> str | None:
        """None when the server can serve now, else a short reason without its address:
        the breaker's cooldown, or ``GET /models`` not answering 200 within
        ``ready_timeout_s`` (skipped right after a successful call; see ``Transport.ready``).
        """
        return await self._transport.ready(self.ready_timeout_s)

    def unavailable_for_s(self) -> float:
        """The breaker's remaining cooldown while it is open (the server keeps failing);
        after discovery found the server unreachable, what is left of
        ``REDISCOVER_EVERY_S`` (the next call after that rediscovers it)."""
        wait = self.breaker.remaining_s()
        found, at = self._discovery, self._discovered_at
        if found is not None and not found.reachable and at is not None:
            wait = max(wait, at + REDISCOVER_EVERY_S - self.breaker.clock())
        return max(0.0, wait)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self.client.aclose()


def fan_out_seeds(seed: int | None, n: int, temperature: float) -> list[int | None]:
    """One seed per fan-out call: ``seed + i`` when the request has a seed (servers such as
    llama.cpp reproduce a seed exactly, so equal seeds would give equal samples), random
    distinct ones when sampling without a seed, none for greedy decoding."""
    if seed is not None:
        return [(seed + i) % 2**63 for i in range(n)]
    if temperature <= 0:
        return [None] * n
    base = random.randrange(2**31 - n)  # 31 bits: every server's seed type takes it
    return [base + i for i in range(n)]
