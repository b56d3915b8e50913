"""The router's request handling, free of HTTP and Ray: validate, decide, run, account, log.

``RouterService`` is what the FastAPI ingress calls; tests drive it directly with a
``FakeBackend``. It turns every failure into an ``APIError`` (4xx for the client's mistakes,
408 when the deadline passes, 503 when backends are down), so no input produces a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.base import Backend, BackendError, ChatMessage
from backends.verifiers.base import Verifier
from policies.base import Budget, Problem, StrategyError, StrategyResult
from router.config import AppConfig
from router.errors import APIError, bad_request
from router.metrics import Metrics
from router.outcome_log import OutcomeLog
from router.rate_limit import RateLimiter
from router.schemas import (
    BudgetOverride,
    ChatCompletionRequest,
    CompletionRequest,
    InMessage,
    RouterOptions,
)

log = logging.getLogger("acr.service")

FALLBACK_STRATEGY = "single_pass"
DEADLINE_GRACE_S = 0.5


@dataclass
class Decision:
    """What the router decided for a request, and why; rendered into ``router`` and headers."""

    strategy: str
    budget: Budget
    reason: str
    source: str  # "explicit" | "effort" | "auto" | "fallback"
    predicted_success: float | None = None
    predicted_latency_ms: float | None = None
    predicted_cost_tokens: float | None = None
    policy_version: str = ""
    difficulty_bin: int | None = None
    explored: bool = False
    probe_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The JSON ``router`` object of responses and of ``/v1/route``."""
        return {
            "strategy": self.strategy,
            "budget": self.budget.model_dump(),
            "reason": self.reason,
            "source": self.source,
            "predicted_success": self.predicted_success,
            "predicted_latency_ms": self.predicted_latency_ms,
            "predicted_cost_tokens": self.predicted_cost_tokens,
            "policy_version": self.policy_version,
            "difficulty_bin": self.difficulty_bin,
            "explored": self.explored,
            "probe_tokens": self.probe_tokens,
        }

    def headers(self) -> dict[str, str]:
        """``x-acr-*`` response headers (ASCII only, short)."""
        h = {
            "x-acr-strategy": self.strategy,
            "x-acr-budget-tokens": str(self.budget.max_tokens),
            "x-acr-budget-samples": str(self.budget.samples),
            "x-acr-reason": self.reason.encode("ascii", "replace").decode()[:200],
            "x-acr-policy-version": self.policy_version,
        }
        if self.predicted_success is not None:
            h["x-acr-predicted-success"] = f"{self.predicted_success:.3f}"
        if self.predicted_latency_ms is not None:
            h["x-acr-predicted-latency-ms"] = f"{self.predicted_latency_ms:.0f}"
        if self.predicted_cost_tokens is not None:
            h["x-acr-predicted-cost-tokens"] = f"{self.predicted_cost_tokens:.0f}"
        return h


class Decider(Protocol):
    """Chooses strategy and budget for a problem; the adaptive policy implements this."""

    async def decide(
        self,
        problem: Problem,
        *,
        effort: str | None,
        options: RouterOptions | None,
        deadline_ms: float,
        generate: bool = True,
    ) -> Decision:
        """Return the decision; must not raise for any problem text.

        ``generate=False`` (``/v1/route``) must not call the model.
        """
        ...

    async def record(
        self, decision: Decision, result: StrategyResult | None, reward: float | None
    ) -> None:
        """Learn from one outcome (may be a no-op)."""
        ...


@dataclass
class ServedResult:
    """A finished request: the chosen strategy run(s) and everything the response needs."""

    id: str
    model: str
    decision: Decision
    results: list[StrategyResult]
    prompt_tokens: int
    latency_ms: float
    task_kind: str
    probe_reused: bool = False
    probe_continued: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def probe_hidden(self) -> int:
        """Probe tokens that count as hidden (0 when the probe is the answer itself)."""
        # A reused probe *is* the visible answer and a continued one its start; otherwise
        # its tokens were spent unseen.
        if self.probe_reused or self.probe_continued:
            return 0
        return self.decision.probe_tokens

    @property
    def completion_tokens(self) -> int:
        """Every generated token, including the probe's and the hidden ones."""
        # A continued probe starts the visible answer but is not in the results' counts.
        visible_probe = self.decision.probe_tokens if self.probe_continued else 0
        return sum(r.completion_tokens for r in self.results) + self.probe_hidden + visible_probe

    @property
    def reasoning_tokens(self) -> int:
        """The hidden part of ``completion_tokens``."""
        return sum(r.hidden_tokens for r in self.results) + self.probe_hidden


def _plain(n: int, max_tokens: int | None, temperature: float | None, problem: Problem) -> bool:
    """A request the probe can answer or start: one greedy choice, no stop strings and no
    token cap tighter than the probe had."""
    return n == 1 and (temperature or 0.0) <= 0 and not problem.stop and max_tokens is None


def prompt_hash(text: str) -> str:
    """Normalised prompt hash used in logs and the decision cache (no prompt text stored)."""
    norm = " ".join(text.lower().split())
    return hashlib.sha256(norm.encode("utf-8", "replace")).hexdigest()[:32]


def budget_for(config: AppConfig, strategy: str, override: BudgetOverride | None) -> Budget:
    """The configured budget of ``strategy`` with the request's explicit fields applied."""
    base = config.strategies.budgets.get(strategy)
    data = base.model_dump() if base is not None else {}
    if override is not None:
        data.update({k: v for k, v in override.model_dump().items() if v is not None})
    return Budget(**data)


class StaticDecider:
    """Chooses by explicit strategy, else ``reasoning_effort``, else the ``auto`` default.

    The adaptive policy (``policies.adaptive``) replaces it when configured; this one is the
    fail-safe used when no trained router model is available.
    """

    def __init__(self, config: AppConfig, auto_effort: str = "medium") -> None:
        self.config = config
        self.auto_effort = auto_effort

    async def decide(
        self,
        problem: Problem,
        *,
        effort: str | None,
        options: RouterOptions | None,
        deadline_ms: float,
        generate: bool = True,
    ) -> Decision:
        """Explicit > effort > default; budgets from config plus request overrides."""
        override = options.budget if options else None
        if options and options.strategy and options.strategy != "auto":
            name, source, reason = options.strategy, "explicit", "strategy named in request"
        elif effort and effort != "auto":
            name = self.config.strategies.effort[effort]  # type: ignore[index]
            source, reason = "effort", f"reasoning_effort={effort}"
        else:
            name = self.config.strategies.effort[self.auto_effort]  # type: ignore[index]
            source, reason = "auto", f"no router model loaded; default effort {self.auto_effort}"
        return Decision(
            strategy=name,
            budget=budget_for(self.config, name, override),
            reason=reason,
            source=source,
            policy_version=self.config.policy.version,
        )

    async def record(
        self, decision: Decision, result: StrategyResult | None, reward: float | None
    ) -> None:
        """Nothing to learn for a static policy."""


VerifierLookup = Callable[[str], tuple[str, Verifier | None]]
StrategyRunner = Callable[..., Awaitable[StrategyResult]]


class RouterService:
    """Serves chat and text completions through the chosen strategy.

    Collaborators are injected: ``backend`` (a Ray handle adapter in production, a fake in
    tests), ``decider``, ``outcomes`` (may be None), ``verifier_lookup`` (problem text ->
    task kind and verifier), ``clock``.
    """

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        *,
        decider: Decider | None = None,
        outcomes: OutcomeLog | None = None,
        metrics: Metrics | None = None,
        verifier_lookup: VerifierLookup | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backend = backend
        self.decider: Decider = decider or StaticDecider(config)
        self.outcomes = outcomes
        self.metrics = metrics or Metrics()
        self.verifier_lookup = verifier_lookup or default_verifier_lookup
        self.clock = clock
        self.limiter = limiter
        self.recent: dict[str, Decision] = {}

    # -- validation ----------------------------------------------------------------------------

    def _check_common(self, req: ChatCompletionRequest | CompletionRequest) -> None:
        lim = self.config.limits
        if req.n > lim.max_n:
            raise bad_request(f"n must be between 1 and {lim.max_n}, got {req.n}", "n")
        stops = req.stop_list()
        if len(stops) > lim.max_stop:
            raise bad_request(
                f"stop takes at most {lim.max_stop} strings, got {len(stops)}", "stop"
            )
        for s in stops:
            if not s or len(s) > lim.max_stop_chars:
                raise bad_request(
                    f"each stop string must have 1 to {lim.max_stop_chars} characters", "stop"
                )
        if req.model not in (None, "", self.backend.name, "auto"):
            raise APIError(
                404,
                f"model {req.model!r} does not exist; available: {self.backend.name}",
                param="model",
                code="model_not_found",
            )

    def _max_tokens(self, *values: int | None) -> int | None:
        lim = self.config.limits.max_tokens
        given = [v for v in values if v is not None]
        if not given:
            return None
        if given[0] > lim:
            raise bad_request(
                f"max_tokens must be between 1 and {lim}, got {given[0]}", "max_tokens"
            )
        return given[0]

    def _messages(self, messages: list[InMessage]) -> list[ChatMessage]:
        lim = self.config.limits
        if len(messages) > lim.max_messages:
            raise bad_request(
                f"at most {lim.max_messages} messages are accepted, got {len(messages)}", "messages"
            )
        out: list[ChatMessage] = []
        total = 0
        for i, m in enumerate(messages):
            text = m.text()
            if len(text) > lim.max_message_chars:
                raise bad_request(
                    f"messages[{i}] has {len(text)} characters; the limit is "
                    f"{lim.max_message_chars}",
                    f"messages.{i}.content",
                )
            total += len(text)
            out.append(ChatMessage(role=m.role, content=text))
        if total > lim.max_prompt_chars:
            raise bad_request(
                f"messages hold {total} characters; the limit is {lim.max_prompt_chars}", "messages"
            )
        if not any(m.role == "user" for m in out):
            raise bad_request("messages must contain at least one user message", "messages")
        return out

    def deadline_ms(self, options: RouterOptions | None) -> float:
        """The request's time budget: its own ``timeout_ms`` (bounded) or the default."""
        srv = self.config.server
        asked = options.timeout_ms if options and options.timeout_ms else None
        if asked is not None and asked > srv.max_request_timeout_ms:
            raise bad_request(
                f"acr.timeout_ms must be at most {srv.max_request_timeout_ms}, got {asked}",
                "acr.timeout_ms",
            )
        return float(asked or srv.request_timeout_ms)

    # -- entry points ------------------------------------------------------------------------

    def chat_problem(self, req: ChatCompletionRequest) -> Problem:
        """Validate a chat request and return the strategies' view of it."""
        self._check_common(req)
        msgs = self._messages(req.messages)
        text = next(m.content for m in reversed(msgs) if m.role == "user")
        return Problem(text=text, messages=msgs, seed=req.seed, stop=req.stop_list())

    def completion_problems(self, req: CompletionRequest) -> list[Problem]:
        """Validate a text completion request; one problem per prompt."""
        self._check_common(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > self.config.limits.max_n:
            raise bad_request(
                f"prompt must be a string or a list of 1 to {self.config.limits.max_n} strings",
                "prompt",
            )
        for p in prompts:
            if len(p) > self.config.limits.max_prompt_chars:
                raise bad_request(
                    f"prompt has {len(p)} characters; the limit is "
                    f"{self.config.limits.max_prompt_chars}",
                    "prompt",
                )
        return [Problem(text=p, prompt=p, seed=req.seed, stop=req.stop_list()) for p in prompts]

    async def decide(
        self,
        problem: Problem,
        effort: str | None,
        options: RouterOptions | None,
        *,
        generate: bool = True,
    ) -> Decision:
        """The decision for ``problem``; ``generate=False`` is ``/v1/route`` (no model call)."""
        deadline_ms = self.deadline_ms(options)
        try:
            return await self.decider.decide(
                problem, effort=effort, options=options, deadline_ms=deadline_ms, generate=generate
            )
        except (StrategyError, ValueError) as exc:
            raise bad_request(str(exc), "acr") from exc

    async def serve(
        self,
        problem: Problem,
        *,
        n: int,
        effort: str | None,
        options: RouterOptions | None,
        max_tokens: int | None,
        temperature: float | None,
        api_key_id: str = "",
    ) -> ServedResult:
        """Decide, run ``n`` independent copies of the strategy, log the outcome."""
        start = self.clock()
        deadline = start + self.deadline_ms(options) / 1000
        await self._check_limits(api_key_id)
        decision = await self.decide(problem, effort, options)
        if max_tokens is not None and max_tokens < decision.budget.max_tokens:
            decision.budget = decision.budget.model_copy(update={"max_tokens": max_tokens})
        if temperature is not None and decision.strategy in ("single_pass", "bounded_reasoning"):
            decision.budget = decision.budget.model_copy(update={"temperature": temperature})
        kind, verifier = self.verifier_lookup(problem.text)
        reused = self._reused_probe(decision, n, max_tokens, temperature, problem)
        continued = None
        if reused is None and _plain(n, max_tokens, temperature, problem):
            cont = getattr(self.decider, "continued_problem", None)
            continued = cont(problem, decision) if cont is not None else None
        try:
            # Strategies honour the deadline themselves; this outer bound guarantees that a
            # stuck backend call can never make the client hang past it.
            results = (
                [reused]
                if reused is not None
                else await asyncio.wait_for(
                    self._run_all(continued or problem, decision, verifier, deadline, n),
                    timeout=max(0.001, deadline - self.clock()) + DEADLINE_GRACE_S,
                )
            )
        except TimeoutError:
            results = []
        latency_ms = (self.clock() - start) * 1000
        if all(r.stop_reason == "deadline" and not r.text for r in results):
            await self._log(problem, decision, results, latency_ms, kind, "timeout", api_key_id)
            raise APIError(
                408,
                f"no answer within the deadline of {self.deadline_ms(options):.0f} ms; "
                "raise acr.timeout_ms or lower the budget",
                type="timeout_error",
                code="deadline_exceeded",
            )
        served = ServedResult(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=self.backend.name,
            decision=decision,
            results=results,
            prompt_tokens=max((r.prompt_tokens for r in results), default=0),
            latency_ms=latency_ms,
            task_kind=kind,
            probe_reused=reused is not None,
            probe_continued=continued is not None,
        )
        self._count(served)
        if self.limiter is not None:
            await self.limiter.charge(api_key_id, served.completion_tokens + served.prompt_tokens)
        await self._log(
            problem,
            decision,
            results,
            latency_ms,
            kind,
            "ok",
            api_key_id,
            served.id,
            served.probe_hidden,
        )
        self._remember(served.id, decision)
        return served

    async def _run_all(
        self,
        problem: Problem,
        decision: Decision,
        verifier: Verifier | None,
        deadline: float,
        n: int,
    ) -> list[StrategyResult]:
        if n > 1 and decision.strategy == "single_pass":
            # n samples of one prompt: one backend call, one shared prefill.
            return await self._sample_n(problem, decision, n, deadline)
        runs = [
            self._run_with_fallback(problem, decision, verifier, deadline, copy=i) for i in range(n)
        ]
        return list(await asyncio.gather(*runs))

    async def _run_with_fallback(
        self,
        problem: Problem,
        decision: Decision,
        verifier: Verifier | None,
        deadline: float,
        copy: int,
    ) -> StrategyResult:
        """Run the strategy; on backend failure retry once, then fall back to a single pass."""
        from policies.registry import get_strategy

        seeded = problem
        if copy and problem.seed is not None:
            seeded = Problem(**{**problem.__dict__, "seed": problem.seed + copy})
        attempts: list[tuple[str, Budget]] = [
            (decision.strategy, decision.budget),
            (decision.strategy, decision.budget),
        ]
        if decision.strategy != FALLBACK_STRATEGY:
            fb = budget_for(self.config, FALLBACK_STRATEGY, None)
            fb = fb.model_copy(update={"max_tokens": decision.budget.max_tokens})
            attempts.append((FALLBACK_STRATEGY, fb))
        last: BackendError | None = None
        for i, (name, budget) in enumerate(attempts):
            if self.clock() >= deadline:
                break
            if i:
                self.metrics.retries.inc()
            if name != decision.strategy:
                self.metrics.fallbacks.inc()
            try:
                strategy = get_strategy(name)
                result = await strategy.run(
                    seeded, self.backend, verifier, budget, deadline, clock=self.clock
                )
                if name != decision.strategy:
                    decision.reason += f"; fell back to {name} after backend errors"
                return result
            except BackendError as exc:
                self.metrics.backend_errors.labels(retryable=str(exc.retryable).lower()).inc()
                last = exc
                if not exc.retryable:
                    raise APIError(
                        400, f"the model refused the request: {exc}", code="backend_refused"
                    ) from exc
                log.warning("backend failed (attempt %d, %s): %s", i + 1, name, exc)
            except StrategyError as exc:
                raise bad_request(str(exc), "acr.budget") from exc
        if last is None:
            raise APIError(
                408,
                "deadline passed before the model could answer",
                type="timeout_error",
                code="deadline_exceeded",
            )
        raise APIError(
            503,
            f"the model backend is unavailable after {len(attempts)} attempts: {last}",
            type="server_error",
            code="backend_unavailable",
            headers={"retry-after": "1"},
        )

    def _reused_probe(
        self,
        decision: Decision,
        n: int,
        max_tokens: int | None,
        temperature: float | None,
        problem: Problem,
    ) -> StrategyResult | None:
        """The probe's greedy answer when the policy says it is the single-pass answer.

        Only for a plain request (one choice, no sampling temperature, no stop strings or
        tighter token cap than the probe had), where generating again would repeat it.
        """
        reuse = getattr(self.decider, "reused_answer", None)
        if reuse is None or not getattr(decision, "reuse_probe", False):
            return None
        if not _plain(n, max_tokens, temperature, problem):
            return None
        result: StrategyResult | None = reuse(decision)
        return result

    async def _check_limits(self, api_key_id: str) -> None:
        if self.limiter is None:
            return
        verdict = await self.limiter.check(api_key_id)
        if not verdict.allowed:
            self.metrics.rate_limited.labels(limit=verdict.limit).inc()
            raise APIError(
                429,
                f"rate limit reached ({verdict.limit}); retry in {verdict.retry_after_s} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"retry-after": str(verdict.retry_after_s)},
            )

    async def _sample_n(
        self, problem: Problem, decision: Decision, n: int, deadline: float
    ) -> list[StrategyResult]:
        """``n`` single-pass samples from one backend call (OpenAI's ``n`` semantics)."""
        from backends.base import GenerationRequest
        from backends.verifiers.numeric import extract_answer

        b = decision.budget
        req = GenerationRequest(
            prompt=problem.prompt,
            messages=problem.messages,
            n=n,
            max_tokens=b.max_tokens,
            temperature=b.temperature,
            stop=problem.stop,
            seed=problem.seed,
        )
        t0 = self.clock()
        res = None
        for attempt in range(2):
            remaining = max(0.001, deadline - self.clock())
            try:
                res = await asyncio.wait_for(self.backend.generate(req), timeout=remaining)
                break
            except TimeoutError as exc:
                raise APIError(
                    408,
                    "no answer within the deadline",
                    type="timeout_error",
                    code="deadline_exceeded",
                ) from exc
            except BackendError as exc:
                self.metrics.backend_errors.labels(retryable=str(exc.retryable).lower()).inc()
                if not exc.retryable:
                    raise APIError(
                        400, f"the model refused the request: {exc}", code="backend_refused"
                    ) from exc
                if attempt == 1:
                    raise APIError(
                        503,
                        f"the model backend is unavailable: {exc}",
                        type="server_error",
                        code="backend_unavailable",
                        headers={"retry-after": "1"},
                    ) from exc
                self.metrics.retries.inc()
        assert res is not None
        wall = (self.clock() - t0) * 1000
        return [
            StrategyResult(
                strategy="single_pass",
                text=c.text,
                answer=extract_answer(c.text),
                candidates=[],
                prompt_tokens=res.prompt_tokens,
                visible_tokens=c.tokens,
                hidden_tokens=0,
                verifier_tokens=0,
                wall_ms=wall,
                samples=1,
                stop_reason="answered",
                finish_reason=c.finish_reason,
            )
            for c in res.completions
        ]

    def _count(self, served: ServedResult) -> None:
        m = self.metrics
        for r in served.results:
            m.strategy.labels(strategy=r.strategy, stop_reason=r.stop_reason).inc()
            m.tokens.labels(kind="visible").inc(r.visible_tokens)
            m.tokens.labels(kind="hidden").inc(r.hidden_tokens)
            m.tokens.labels(kind="verifier").inc(r.verifier_tokens)
        m.tokens.labels(kind="prompt").inc(served.prompt_tokens)
        m.tokens.labels(kind="hidden").inc(served.probe_hidden)

    def _remember(self, response_id: str, decision: Decision) -> None:
        # Feedback arrives later for a response id; keep a bounded map of recent decisions.
        self.recent[response_id] = decision
        if len(self.recent) > 10_000:
            self.recent.pop(next(iter(self.recent)))

    async def _log(
        self,
        problem: Problem,
        decision: Decision,
        results: list[StrategyResult],
        latency_ms: float,
        kind: str,
        status: str,
        api_key_id: str,
        response_id: str = "",
        probe_hidden: int | None = None,
    ) -> None:
        if probe_hidden is None:
            probe_hidden = decision.probe_tokens
        scores = [r.score for r in results if r.score is not None]
        record = {
            "id": response_id,
            "ts": time.time(),
            "status": status,
            "prompt_hash": prompt_hash(problem.text),
            "task": kind,
            "strategy": decision.strategy,
            "source": decision.source,
            "reason": decision.reason,
            "budget": decision.budget.model_dump(),
            "policy_version": decision.policy_version,
            "difficulty_bin": decision.difficulty_bin,
            "predicted_success": decision.predicted_success,
            "explored": decision.explored,
            "features": decision.extra.get("features"),
            "prompt_tokens": max((r.prompt_tokens for r in results), default=0),
            "completion_tokens": sum(r.completion_tokens for r in results) + probe_hidden,
            "reasoning_tokens": sum(r.hidden_tokens for r in results) + probe_hidden,
            "verifier_tokens": sum(r.verifier_tokens for r in results),
            "probe_tokens": decision.probe_tokens,
            "samples": sum(r.samples for r in results),
            "stop_reason": ",".join(sorted({r.stop_reason for r in results})),
            "latency_ms": round(latency_ms, 3),
            "verifier_score": max(scores) if scores else None,
            "api_key": api_key_id,
        }
        if self.config.server.log_prompts:
            record["prompt"] = problem.text
        try:
            await self.decider.record(decision, results[0] if results else None, None)
        except Exception:  # noqa: BLE001 - learning must never fail a served request
            log.exception("policy update failed")
        if self.outcomes is not None:
            await self.outcomes.append(record)

    async def feedback(self, response_id: str, reward: float) -> dict[str, Any]:
        """Apply a client's reward to a recent response's decision and log it."""
        decision = self.recent.get(response_id)
        if decision is None:
            raise APIError(
                404, f"no recent response with id {response_id!r}", param="id", code="not_found"
            )
        await self.decider.record(decision, None, reward)
        if self.outcomes is not None:
            await self.outcomes.append(
                {
                    "id": response_id,
                    "ts": time.time(),
                    "status": "feedback",
                    "reward": reward,
                    "strategy": decision.strategy,
                    "policy_version": decision.policy_version,
                    "difficulty_bin": decision.difficulty_bin,
                }
            )
        return {"id": response_id, "accepted": True}


def default_verifier_lookup(text: str) -> tuple[str, Verifier | None]:
    """Task kind of ``text`` and the verifier serving uses for it (exact checkers only)."""
    try:
        from backends.bundled.tasks.detect import parse_task
        from backends.verifiers.registry import verifier_for_task
    except ImportError:  # pragma: no cover - bundled tasks are part of the package
        return "open", None
    kind = parse_task(text).kind
    return kind, verifier_for_task(kind)
