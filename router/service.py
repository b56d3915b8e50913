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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from backends.base import Backend, BackendError
from difficulty.profiles import TaskProfiles
from policies.base import Problem, StrategyError, StrategyResult
from policies.decision import Decision, DecisionRequest
from policies.decision_cache import prompt_hash
from policies.learning import outcome_signal
from policies.policy import Policy
from router.config import AppConfig
from router.errors import APIError, bad_request
from router.execution import Ask, Execution, Executor, continued
from router.limits import check_budget_override, within_ceiling
from router.metrics import Metrics
from router.outcome_log import OutcomeLog
from router.rate_limit import LimitVerdict, RateLimiter, Reservation
from router.schemas import RouterOptions
from router.served import ServedResult
from router.token_charges import (
    admission_tokens,
    decided_tokens,
    spent_without_answer,
    streamed_tokens,
)
from router.validation import RequestValidator

log = logging.getLogger("acr.service")

#: the outer bound's slack over the deadline, for a strategy to hand back its best so far
DEADLINE_GRACE_S = 0.5


@dataclass(frozen=True)
class Admitted:
    """A request past its limits and decided: what running it needs."""

    problem: Problem
    decision: Decision
    ask: Ask
    start: float
    deadline_ms: float
    api_key_id: str
    #: the tokens it holds against its key's limit until it ends (None: no limit applies)
    reservation: Reservation | None = None

    @property
    def deadline(self) -> float:
        """The monotonic time the request must be answered by."""
        return self.start + self.deadline_ms / 1000


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
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Let the backend get ready (discover what it can do) once, before its first
        request; a failure is retried on the next request."""
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.backend.start()
                self._started = True

    async def readiness(self) -> dict[str, str]:
        """What keeps the service from serving now, by part (empty: ready)."""
        problems: dict[str, str] = {}
        try:
            await self.start()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problems["backend"] = f"not started ({type(exc).__name__})"
        reason = await self.backend.ready()
        if reason is not None:
            problems.setdefault("backend", reason)
        if self.outcomes is not None:
            problems.update(await self.outcomes.problems())
        return problems

    def decision_request(
        self,
        effort: str | None,
        options: RouterOptions | None,
        *,
        ask: Ask | None = None,
        generate: bool = True,
        tenant: str = "",
    ) -> DecisionRequest:
        """What the request asks of the policy (``generate=False``: decide only); ``tenant``
        (the caller's key id) scopes the decision cache."""
        budget = None
        if options is not None and options.budget is not None:
            budget = {k: v for k, v in options.budget.model_dump().items() if v is not None}
        check_budget_override(budget, self.config.limits)
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
            tenant=tenant,
        )

    async def decide(self, problem: Problem, request: DecisionRequest) -> Decision:
        """The policy's decision; a request's invalid strategy or budget is a 400."""
        try:
            return await self.policy.decide(problem, request)
        except (StrategyError, ValueError) as exc:
            raise bad_request(str(exc), "acr") from exc

    async def admit(
        self,
        problem: Problem,
        *,
        n: int,
        effort: str | None,
        options: RouterOptions | None,
        max_tokens: int | None,
        temperature: float | None,
        api_key_id: str = "",
        start: float | None = None,
    ) -> Admitted:
        """Check the caller's limits and decide: everything before generating. Raises
        ``APIError`` (a 4xx or 503) before anything is sent to the client. ``start`` is when
        the HTTP request arrived (its deadline counts from there; default: now)."""
        start = self.clock() if start is None else start
        await self.start()
        ask = Ask(n=n, max_tokens=max_tokens, temperature=temperature)
        request = self.decision_request(effort, options, ask=ask, tenant=api_key_id)
        deadline_ms = request.deadline_ms or self.config.server.request_timeout_ms
        held = await self._check_limits(api_key_id, problem)
        decision: Decision | None = None
        try:
            decision = await self.decide(problem, request)
            decision = within_ceiling(decision, n, problem.think, self.config.limits)
        except BaseException:
            await self._settle(held, spent_without_answer(problem, decision), "error")
            raise
        reservation = await self._reserve(held, problem, decision, n)
        return Admitted(problem, decision, ask, start, deadline_ms, api_key_id, reservation)

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
        start: float | None = None,
    ) -> ServedResult:
        """Decide, run ``n`` copies of the decision, record the outcome (``start``: see
        ``admit``)."""
        adm = await self.admit(
            problem,
            n=n,
            effort=effort,
            options=options,
            max_tokens=max_tokens,
            temperature=temperature,
            api_key_id=api_key_id,
            start=start,
        )
        return await self.run(adm)

    async def run(self, adm: Admitted) -> ServedResult:
        """Run an admitted request to its end and record it."""
        try:
            # Strategies honour the deadline themselves; this outer bound guarantees that a
            # stuck backend call can never make the client hang past it.
            run = await asyncio.wait_for(
                self.executor.run(adm.problem, adm.decision, adm.ask, adm.deadline),
                timeout=max(0.001, adm.deadline - self.clock()) + DEADLINE_GRACE_S,
            )
        except TimeoutError:
            run = Execution([])
        except APIError:
            await self._record(adm, [], "error")
            spent = spent_without_answer(adm.problem, adm.decision)
            await self._settle(adm.reservation, spent, "error")
            raise
        except BaseException as exc:
            # Cancelled (the client went away) or a bug: the cut calls report no count. The
            # outcome is still recorded (and the load entry ended), whatever cancels us.
            await asyncio.shield(self._record(adm, [], _ending(exc)))
            await self._settle(adm.reservation, None, _ending(exc))
            raise
        return await self.complete(adm, run)

    async def stream(self, adm: Admitted) -> AsyncIterator[str | ServedResult]:
        """An admitted request's answer as it is produced: text pieces of its one choice,
        then the ``ServedResult``. Single pass streams the backend's tokens; other
        strategies (and ``n`` > 1, a reasoning model's answer, a reused probe) run to the
        end first. A backend failure before the first piece retries as ``run`` does; the
        outcome is recorded however the stream ends."""
        problem, decision, ask = adm.problem, adm.decision, adm.ask
        plain = ask.plain(problem)
        if ask.n != 1 or problem.think is not None or (plain and decision.reuse_probe):
            served = await self.run(adm)
            for r in served.results:
                yield r.text
            yield served
            return
        go_on = continued(problem, decision.probe) if plain and decision.continue_probe else None
        strategy = self.config.strategies.strategy(decision.strategy)
        result: StrategyResult | None = None
        sent: list[str] = []
        try:
            async for item in strategy.stream(
                go_on or problem, self.backend, decision.budget, adm.deadline, self.clock
            ):
                if isinstance(item, str):
                    sent.append(item)
                    yield item
                else:
                    result = item
        except BackendError:
            if sent:
                await self._record(adm, [], "error")
                await self._settle_stream(adm, sent, go_on, "error")
                raise
            served = await self.run(adm)  # nothing sent yet: retry and fall back as usual
            yield served.results[0].text if served.results else ""
            yield served
            return
        except BaseException as exc:
            # The client left mid-stream (or the task was cancelled): the closed stream
            # stops the backend, so the request is charged what was sent, and its outcome
            # is recorded.
            await self._settle_stream(adm, sent, go_on, _ending(exc))
            await asyncio.shield(self._record(adm, [], _ending(exc)))
            raise
        yield await self.complete(
            adm, Execution([result] if result else [], probe_continued=go_on is not None)
        )

    async def complete(self, adm: Admitted, run: Execution) -> ServedResult:
        """The finished request: 408 when nothing came in time; else counted, charged to
        the caller's limits, recorded and kept for feedback."""
        served = ServedResult(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=self.backend.name,
            decision=adm.decision,
            results=run.results,
            latency_ms=(self.clock() - adm.start) * 1000,
            task_kind=adm.problem.task.kind,
            probe_reused=run.probe_reused,
            probe_continued=run.probe_continued,
        )
        if all(r.stop_reason == "deadline" and not r.text for r in run.results):
            await self._record(adm, run.results, "timeout")
            # The calls cut at the deadline report no count: charge all it held.
            held = adm.reservation.tokens if adm.reservation is not None else 0
            spent = max(served.completion_tokens + served.prompt_tokens, held)
            await self._settle(adm.reservation, spent, "timeout")
            raise APIError(
                408,
                f"no answer within the deadline of {adm.deadline_ms:.0f} ms; "
                "raise acr.timeout_ms or lower the budget",
                type="timeout_error",
                code="deadline_exceeded",
            )
        self._count(served)
        decision = adm.decision
        if decision.predicted_latency_ms is not None:
            labels = {"strategy": decision.strategy}
            self.metrics.latency_predicted.labels(**labels).observe(
                decision.predicted_latency_ms / 1000
            )
            self.metrics.latency_observed.labels(**labels).observe(served.latency_ms / 1000)
        await self._settle(adm.reservation, served.completion_tokens + served.prompt_tokens, "ok")
        await self._record(adm, run.results, "ok", served.id, served.probe_hidden)
        return served

    async def _check_limits(self, api_key_id: str, problem: Problem) -> Reservation | None:
        """Count the request against its key's limits and hold its prompt and probe (a 429
        when they do not fit); the hold, which ``_reserve`` grows once decided."""
        if self.limiter is None:
            return None
        probe = int(getattr(self.policy, "probe_tokens", 0) or 0)
        verdict = await self.limiter.reserve(api_key_id, admission_tokens(problem, probe))
        self._refuse_unless_allowed(verdict)
        return verdict.reservation

    async def _reserve(
        self, held: Reservation | None, problem: Problem, decision: Decision, n: int
    ) -> Reservation | None:
        """Grow the admission hold to what the decided request may spend; a 429 (charged
        its probe) when that does not fit beside the key's other requests."""
        if held is None or self.limiter is None:
            return held
        verdict = await self.limiter.resize(held, decided_tokens(problem, decision, n))
        if not verdict.allowed:
            await self._settle(held, spent_without_answer(problem, decision), "refused")
        self._refuse_unless_allowed(verdict)
        return held

    def _refuse_unless_allowed(self, verdict: LimitVerdict) -> None:
        if verdict.allowed:
            return
        self.metrics.rate_limited.labels(limit=verdict.limit).inc()
        raise APIError(
            429,
            f"rate limit reached ({verdict.limit}); retry in {verdict.retry_after_s} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"retry-after": str(verdict.retry_after_s)},
        )

    async def _settle(self, held: Reservation | None, spent: int | None, outcome: str) -> None:
        """Charge ``spent`` (None: all it holds) and release the rest of ``held``, once."""
        if held is not None and self.limiter is not None:
            await self.limiter.settle(held, spent, outcome)

    async def _settle_stream(
        self, adm: Admitted, sent: list[str], go_on: Problem | None, outcome: str
    ) -> None:
        streamed = streamed_tokens(self.backend, sent, go_on.prefix if go_on else "")
        spent = spent_without_answer(adm.problem, adm.decision, streamed)
        await self._settle(adm.reservation, spent, outcome)

    def _count(self, served: ServedResult) -> None:
        m = self.metrics
        for r in served.results:
            m.strategy.labels(strategy=r.strategy, stop_reason=r.stop_reason).inc()
            m.tokens.labels(kind="visible").inc(r.visible_tokens)
            m.tokens.labels(kind="hidden").inc(r.hidden_tokens)
            m.tokens.labels(kind="verifier").inc(r.verifier_tokens)
        m.tokens.labels(kind="prompt").inc(served.prompt_tokens)
        m.tokens.labels(kind="hidden").inc(served.probe_hidden)

    async def _record(
        self,
        adm: Admitted,
        results: list[StrategyResult],
        status: str,
        response_id: str = "",
        probe_hidden: int | None = None,
    ) -> None:
        """Learn from the outcome (never failing the request) and append it to the log."""
        decision = adm.decision
        result = results[0] if results else None
        signal = outcome_signal(result, adm.problem.task, self.config.policy.agreement_weight)
        try:
            await self.policy.record(decision, result, None, signal=signal)
            if response_id:
                await self.policy.remember(response_id, decision, adm.api_key_id)
        except Exception:  # noqa: BLE001 - learning must never fail a served request
            log.exception("policy update failed")
        if self.outcomes is not None:
            record = outcome_record(
                adm.problem,
                decision,
                results,
                (self.clock() - adm.start) * 1000,
                status,
                adm.api_key_id,
                response_id,
                decision.probe_tokens if probe_hidden is None else probe_hidden,
                log_prompt=self.config.server.log_prompts,
            )
            if signal is not None:
                # A proxy is marked as one: retraining must not take agreement for a grade.
                record.update(reward_source=signal.source, reward_signal=signal.reward)
            await self.outcomes.append(record)

    async def feedback(self, response_id: str, reward: float, api_key_id: str) -> dict[str, Any]:
        """Apply a client's reward for one of its own responses, once, and log it.

        404 when there is no such response or another key made it (indistinguishable to the
        caller), 409 when feedback on it was already taken. A key whose allowance for that
        estimate is used up is answered 200 with ``applied`` 0: it moved nothing. Each call
        counts against the key's ``requests_per_minute`` (a 429 past it), so ids cannot be
        probed without limit.
        """
        if self.limiter is not None:
            counted = await self.limiter.reserve(api_key_id, 0)
            self._refuse_unless_allowed(counted)
            await self._settle(counted.reservation, 0, "feedback")
        verdict, weight = await self.policy.feedback(response_id, reward, api_key_id)
        if verdict == "unknown":
            raise APIError(
                404, f"no recent response with id {response_id!r}", param="id", code="not_found"
            )
        if verdict == "duplicate":
            raise APIError(
                409,
                f"feedback on response {response_id!r} was already recorded",
                param="id",
                code="duplicate_feedback",
            )
        if self.outcomes is not None:
            await self.outcomes.append(
                {
                    "id": response_id,
                    "ts": time.time(),
                    "status": "feedback",
                    "reward": reward,
                    "reward_source": "feedback",
                    "feedback_weight": weight,
                    "api_key": api_key_id,
                }
            )
        return {"id": response_id, "accepted": True, "applied": weight, "capped": weight == 0}


def _ending(exc: BaseException) -> str:
    """How a request that raised ``exc`` ended, for the limits' settlement metric."""
    return "abandoned" if isinstance(exc, asyncio.CancelledError | GeneratorExit) else "error"


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
