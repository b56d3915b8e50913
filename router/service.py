"""The router's request handling, free of HTTP and Ray: decide, run, account, record.

``RouterService`` is what the FastAPI ingress calls, and what ``acr bench`` and
``acr calibrate`` drive in-process: one orchestration path. It turns every failure into an
``APIError`` (4xx for the client's mistakes, 408 when the deadline passes, 503 when backends
are down), so no input produces a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from backends.base import Backend
from difficulty.profiles import TaskProfiles
from policies.base import Problem, StrategyError, StrategyResult
from policies.decision import Decision, DecisionRequest
from policies.decision_cache import prompt_hash
from policies.policy import Policy
from router.config import AppConfig
from router.errors import APIError, bad_request
from router.execution import Ask, Executor
from router.metrics import Metrics
from router.outcome_log import OutcomeLog
from router.rate_limit import RateLimiter
from router.schemas import RouterOptions
from router.served import ServedResult
from router.validation import RequestValidator

log = logging.getLogger("acr.service")

#: the outer bound's slack over the deadline, for a strategy to hand back its best so far
DEADLINE_GRACE_S = 0.5
#: recent decisions kept for feedback by response id
RECENT_DECISIONS = 10_000


class RouterService:
    """Serves chat and text completions through the strategy the policy chooses.

    Collaborators are injected: ``backend`` (a Ray handle adapter in production, a fake in
    tests), ``policy``, ``outcomes`` (may be None), ``limiter`` (may be None), ``clock``.
    """

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        policy: Policy,
        *,
        outcomes: OutcomeLog | None = None,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
        profiles: TaskProfiles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backend = backend
        self.policy = policy
        self.outcomes = outcomes
        self.metrics = metrics or Metrics()
        self.limiter = limiter
        self.clock = clock
        self.validate = RequestValidator(config, backend.name, profiles or TaskProfiles())
        self.executor = Executor(backend, self.metrics, config.strategies, clock)
        self.recent: dict[str, Decision] = {}

    def decision_request(
        self,
        effort: str | None,
        options: RouterOptions | None,
        *,
        ask: Ask | None = None,
        generate: bool = True,
    ) -> DecisionRequest:
        """What the request asks of the policy (``generate=False``: decide only)."""
        budget = None
        if options is not None and options.budget is not None:
            budget = {k: v for k, v in options.budget.model_dump().items() if v is not None}
        return DecisionRequest(
            effort=effort,
            strategy=options.strategy if options else None,
            budget=budget or None,
            max_tokens=ask.max_tokens if ask else None,
            temperature=ask.temperature if ask else None,
            latency_budget_ms=options.latency_budget_ms if options else None,
            deadline_ms=self.validate.deadline_ms(options),
            probe=generate,
            serving=generate,
        )

    async def decide(self, problem: Problem, request: DecisionRequest) -> Decision:
        """The policy's decision; a request's invalid strategy or budget is a 400."""
        try:
            return await self.policy.decide(problem, request)
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
        """Decide, run ``n`` copies of the decision, record the outcome."""
        start = self.clock()
        ask = Ask(n=n, max_tokens=max_tokens, temperature=temperature)
        request = self.decision_request(effort, options, ask=ask)
        deadline_ms = request.deadline_ms or self.config.server.request_timeout_ms
        deadline = start + deadline_ms / 1000
        await self._check_limits(api_key_id)
        decision = await self.decide(problem, request)
        try:
            # Strategies honour the deadline themselves; this outer bound guarantees that a
            # stuck backend call can never make the client hang past it.
            run = await asyncio.wait_for(
                self.executor.run(problem, decision, ask, deadline),
                timeout=max(0.001, deadline - self.clock()) + DEADLINE_GRACE_S,
            )
            results, reused, continued = run.results, run.probe_reused, run.probe_continued
        except TimeoutError:
            results, reused, continued = [], False, False
        except APIError:
            await self._record(problem, decision, [], (self.clock() - start) * 1000, "error")
            raise
        served = ServedResult(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=self.backend.name,
            decision=decision,
            results=results,
            latency_ms=(self.clock() - start) * 1000,
            task_kind=problem.task.kind,
            probe_reused=reused,
            probe_continued=continued,
        )
        if all(r.stop_reason == "deadline" and not r.text for r in results):
            await self._record(problem, decision, results, served.latency_ms, "timeout", api_key_id)
            raise APIError(
                408,
                f"no answer within the deadline of {deadline_ms:.0f} ms; "
                "raise acr.timeout_ms or lower the budget",
                type="timeout_error",
                code="deadline_exceeded",
            )
        self._count(served)
        if self.limiter is not None:
            await self.limiter.charge(api_key_id, served.completion_tokens + served.prompt_tokens)
        await self._record(
            problem,
            decision,
            results,
            served.latency_ms,
            "ok",
            api_key_id,
            served.id,
            served.probe_hidden,
        )
        self._remember(served.id, decision)
        return served

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
        if len(self.recent) > RECENT_DECISIONS:
            self.recent.pop(next(iter(self.recent)))

    async def _record(
        self,
        problem: Problem,
        decision: Decision,
        results: list[StrategyResult],
        latency_ms: float,
        status: str,
        api_key_id: str = "",
        response_id: str = "",
        probe_hidden: int | None = None,
    ) -> None:
        """Learn from the outcome (never failing the request) and append it to the log."""
        try:
            await self.policy.record(decision, results[0] if results else None, None)
        except Exception:  # noqa: BLE001 - learning must never fail a served request
            log.exception("policy update failed")
        if self.outcomes is not None:
            await self.outcomes.append(
                outcome_record(
                    problem,
                    decision,
                    results,
                    latency_ms,
                    status,
                    api_key_id,
                    response_id,
                    decision.probe_tokens if probe_hidden is None else probe_hidden,
                    log_prompt=self.config.server.log_prompts,
                )
            )

    async def feedback(self, response_id: str, reward: float) -> dict[str, Any]:
        """Apply a client's reward to a recent response's decision and log it."""
        decision = self.recent.get(response_id)
        if decision is None:
            raise APIError(
                404, f"no recent response with id {response_id!r}", param="id", code="not_found"
            )
        await self.policy.record(decision, None, reward)
        if self.outcomes is not None:
            await self.outcomes.append(
                {
                    "id": response_id,
                    "ts": time.time(),
                    "status": "feedback",
                    "reward": reward,
                    "strategy": decision.strategy,
                    "arm": decision.arm,
                    "policy_version": decision.policy_version,
                    "difficulty_bin": decision.difficulty_bin,
                }
            )
        return {"id": response_id, "accepted": True}


def outcome_record(
    problem: Problem,
    decision: Decision,
    results: list[StrategyResult],
    latency_ms: float,
    status: str,
    api_key_id: str,
    response_id: str,
    probe_hidden: int,
    *,
    log_prompt: bool,
) -> dict[str, Any]:
    """The outcome stream's record of one request (no prompt text unless ``log_prompt``)."""
    scores = [r.score for r in results if r.score is not None]
    record: dict[str, Any] = {
        "id": response_id,
        "ts": time.time(),
        "status": status,
        "prompt_hash": prompt_hash(problem.text),
        "task": problem.task.kind,
        "strategy": decision.strategy,
        "arm": decision.arm,
        "source": decision.source,
        "reason": decision.reason,
        "budget": decision.budget.model_dump(),
        "policy_version": decision.policy_version,
        "difficulty_bin": decision.difficulty_bin,
        "predicted_success": decision.predicted_success,
        "explored": decision.explored,
        "features": decision.features,
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
    if log_prompt:
        record["prompt"] = problem.text
    return record
