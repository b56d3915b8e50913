"""Recording what happened to a request: the policy's learner updated where the outcome is
recorded, and the outcome appended to the log (the spool, then the Redis stream).

``OutcomeRecorder.recording`` is the async context manager a served request runs inside,
once it is admitted: however the block ends it records exactly one outcome, with the status
the way out says (``ok``, ``timeout``, ``error``, ``abandoned``), also when the request is
cancelled. Feedback on a past response is an outcome too (``feedback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from policies.base import StrategyResult
from policies.decision import Decision
from policies.decision_cache import prompt_hash
from policies.learning import FeedbackVerdict, OnlineLearner, outcome_signal
from policies.request import RequestSpec
from router.errors import AlreadyDone, DeadlineExceeded, NotFound
from router.outcomes.log import OutcomeLog

log = logging.getLogger("acr.outcomes")


@dataclass
class Outcome:
    """What a request produced, filled in as it runs: its ``results`` (when it has any),
    the ``response_id`` it was answered with and the probe tokens that count as hidden
    (None: all the decision's probe tokens)."""

    results: list[StrategyResult] = field(default_factory=list)
    response_id: str = ""
    probe_hidden: int | None = None


def status_of(exc: BaseException | None) -> str:
    """The outcome stream's status of a request that raised ``exc`` (None: answered)."""
    if exc is None:
        return "ok"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "abandoned"
    return "error"


class OutcomeRecorder:
    """Records outcomes: ``learner`` (None: nothing is learned) and ``outcomes`` (None: no
    log); ``agreement_weight`` is what agreement among samples counts as evidence;
    ``log_prompts`` keeps prompt text in the log."""

    def __init__(
        self,
        learner: OnlineLearner | None,
        outcomes: OutcomeLog | None,
        *,
        agreement_weight: float,
        log_prompts: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.learner = learner
        self.outcomes = outcomes
        self.agreement_weight = agreement_weight
        self.log_prompts = log_prompts
        self.clock = clock

    @contextlib.asynccontextmanager
    async def recording(self, spec: RequestSpec, decision: Decision) -> AsyncIterator[Outcome]:
        """Record one outcome of ``decision`` for ``spec`` however the block ends."""
        outcome = Outcome()
        try:
            yield outcome
        except BaseException as exc:
            # Whatever cancels us, the outcome is still recorded (and the load entry ended).
            await asyncio.shield(self.record(spec, decision, outcome, status_of(exc)))
            raise
        await self.record(spec, decision, outcome, "ok")

    async def record(
        self, spec: RequestSpec, decision: Decision, outcome: Outcome, status: str
    ) -> None:
        """Learn from the outcome (never failing the request) and append it to the log."""
        if status not in ("ok", "timeout"):
            # A request that failed or was abandoned has no result to learn from or log.
            outcome = Outcome(response_id=outcome.response_id, probe_hidden=outcome.probe_hidden)
        result = outcome.results[0] if outcome.results else None
        signal = outcome_signal(result, spec.problem.task, self.agreement_weight, spec.problem)
        if self.learner is not None:
            try:
                await self.learner.record(decision, result, None, signal=signal)
                if outcome.response_id:
                    await self.learner.remember(outcome.response_id, decision, spec.tenant)
            except Exception:  # noqa: BLE001 - learning must never fail a served request
                log.exception("policy update failed")
        if self.outcomes is None:
            return
        start = spec.start if spec.start is not None else self.clock()
        record = outcome_record(
            spec,
            decision,
            outcome,
            (self.clock() - start) * 1000,
            status,
            log_prompt=self.log_prompts,
        )
        if signal is not None:
            # A proxy is marked as one: retraining must not take agreement for a grade.
            record.update(reward_source=signal.source, reward_signal=signal.reward)
        await self.outcomes.append(record)

    async def feedback(self, response_id: str, reward: float, tenant: str) -> dict[str, Any]:
        """Apply a client's reward for one of its own responses, once, and log it.

        ``NotFound`` when there is no such response or another key made it
        (indistinguishable to the caller), ``AlreadyDone`` when feedback on it was already
        taken. A key whose allowance for that estimate is used up is answered with
        ``applied`` 0: it moved nothing.
        """
        verdict: FeedbackVerdict = "unknown"
        weight = 0.0
        if self.learner is not None:
            verdict, weight = await self.learner.feedback(response_id, reward, tenant)
        if verdict == "unknown":
            raise NotFound(f"no recent response with id {response_id!r}", "id")
        if verdict == "duplicate":
            raise AlreadyDone(f"feedback on response {response_id!r} was already recorded", "id")
        if self.outcomes is not None:
            await self.outcomes.append(
                {
                    "id": response_id,
                    "ts": time.time(),
                    "status": "feedback",
                    "reward": reward,
                    "reward_source": "feedback",
                    "feedback_weight": weight,
                    "api_key": tenant,
                }
            )
        return {"id": response_id, "accepted": True, "applied": weight, "capped": weight == 0}


def outcome_record(
    spec: RequestSpec,
    decision: Decision,
    outcome: Outcome,
    latency_ms: float,
    status: str,
    *,
    log_prompt: bool,
) -> dict[str, Any]:
    """The outcome stream's record of one request (no prompt text unless ``log_prompt``)."""
    results = outcome.results
    probe_hidden = decision.probe_tokens if outcome.probe_hidden is None else outcome.probe_hidden
    scores = [r.score for r in results if r.score is not None]
    record: dict[str, Any] = {
        "id": outcome.response_id,
        "ts": time.time(),
        "status": status,
        "prompt_hash": prompt_hash(spec.problem.text),
        "task": spec.problem.task.kind,
        "strategy": decision.strategy,
        "arm": decision.arm,
        "source": decision.source,
        "reason": decision.reason,
        "budget": decision.budget.model_dump(),
        "policy_version": decision.policy_version,
        "config_revision": decision.config_revision,
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
        "api_key": spec.tenant,
    }
    if "user" in spec.problem.params:
        record["user"] = spec.problem.params["user"]
    if log_prompt:
        record["prompt"] = spec.problem.text
    return record
