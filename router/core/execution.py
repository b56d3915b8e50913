"""Running a decision: the probe's answer reused or continued, else the chosen strategy with
one retry and a single-pass fallback on backend failures, ``n`` copies at once.

Backend and strategy failures become domain errors here (``BackendRefused`` when the model
refuses the request, ``DeadlineExceeded`` when the deadline passes first,
``BackendUnavailable`` when the backend stays down, ``InvalidOption`` for a budget the
strategy cannot run with).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from backends.base import Backend, BackendError, ThinkTags
from difficulty.probe import ProbeResult
from policies.base import Problem, StrategyError, StrategyResult
from policies.budget import Budget
from policies.decision import Decision
from policies.registry import FALLBACK_STRATEGY
from policies.request import RequestSpec
from policies.settings import StrategiesSettings
from router.errors import (
    BackendFailed,
    BackendRefused,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidOption,
)
from router.metrics import Metrics
from tasks.task import Task

log = logging.getLogger("acr.service")


@dataclass
class Execution:
    """The results of running a decision, whether the probe answered or began it, and the
    strategy it fell back to when the chosen one kept failing (None: it did not)."""

    results: list[StrategyResult]
    probe_reused: bool = False
    probe_continued: bool = False
    fell_back_to: str | None = None


def probe_as_result(probe: ProbeResult, strategy: str, task: Task) -> StrategyResult:
    """The probe's greedy completion as ``strategy``'s result (no new tokens).

    Its tokens are *visible* here; the caller must not count the probe's tokens again.
    """
    return StrategyResult(
        strategy=strategy,
        text=probe.text,
        answer=task.answer_of(probe.text),
        candidates=[],
        prompt_tokens=probe.prompt_tokens,
        visible_tokens=probe.tokens,
        hidden_tokens=0,
        verifier_tokens=0,
        wall_ms=probe.wall_ms,
        samples=1,
        stop_reason="answered" if probe.verifier_score is None else "verified",
        score=probe.verifier_score,
        finish_reason=probe.finish_reason,
    )


def continued(problem: Problem, probe: ProbeResult | None) -> Problem | None:
    """``problem`` with a probe that its token limit cut short as its answer prefix."""
    if probe is None or not probe.text or probe.finish_reason == "stop":
        return None
    return dataclasses.replace(problem, prefix=probe.text, prefix_tokens=probe.tokens)


class Executor:
    """Runs decisions against ``backend`` with the configured ``strategies``."""

    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        strategies: StrategiesSettings,
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.strategies = strategies
        self.clock = clock

    async def run(self, spec: RequestSpec, decision: Decision) -> Execution:
        """Serve ``decision`` for ``spec`` by its deadline."""
        problem = spec.problem
        if spec.plain and decision.reuse_probe and decision.probe is not None:
            result = probe_as_result(decision.probe, decision.strategy, problem.task)
            return Execution([result], True)
        go_on = (
            continued(problem, decision.probe) if spec.plain and decision.continue_probe else None
        )
        results, fell_back_to = await self._with_fallback(
            go_on or problem, decision, spec.n, spec.deadline
        )
        if problem.think is not None:
            results = [self._thinking_apart(r, problem.think) for r in results]
        return Execution(results, probe_continued=go_on is not None, fell_back_to=fell_back_to)

    def _thinking_apart(self, result: StrategyResult, think: ThinkTags) -> StrategyResult:
        """A reasoning model's response with its thinking moved out of the visible text:
        ``reasoning`` holds it and its tokens count as hidden (by the model's tokenizer
        where the backend has one, else by their share of the characters)."""
        if result.reasoning is not None:
            return result
        thinking, answer = think.split(result.text)
        if thinking is None:
            return result
        counted = self.backend.count_tokens(answer)
        if counted is None:
            counted = round(result.visible_tokens * len(answer) / max(1, len(result.text)))
        visible = min(result.visible_tokens, counted)
        return dataclasses.replace(
            result,
            text=answer,
            reasoning=thinking,
            visible_tokens=visible,
            hidden_tokens=result.hidden_tokens + result.visible_tokens - visible,
        )

    async def _with_fallback(
        self, problem: Problem, decision: Decision, n: int, deadline: float
    ) -> tuple[list[StrategyResult], str | None]:
        """Run the strategy; on backend failure retry once, then fall back to a single pass."""
        attempts: list[tuple[str, Budget]] = [
            (decision.strategy, decision.budget),
            (decision.strategy, decision.budget),
        ]
        if decision.strategy != FALLBACK_STRATEGY:
            fb = self.strategies.budget(FALLBACK_STRATEGY).model_copy(
                update={"max_tokens": decision.budget.max_tokens}
            )
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
                results = await self.strategies.strategy(name).run_copies(
                    problem, self.backend, budget, deadline, n, clock=self.clock
                )
            except BackendError as exc:
                self.metrics.backend_errors.labels(retryable=str(exc.retryable).lower()).inc()
                last = exc
                if exc.server_failed:
                    raise BackendFailed(f"the model server failed on this request: {exc}") from exc
                if not exc.retryable:
                    raise BackendRefused(f"the model refused the request: {exc}") from exc
                log.warning("backend failed (attempt %d, %s): %s", i + 1, name, exc)
                continue
            except StrategyError as exc:
                raise InvalidOption(str(exc), exc.field or "acr.budget") from exc
            return results, (name if name != decision.strategy else None)
        if last is None:
            raise DeadlineExceeded("deadline passed before the model could answer")
        raise BackendUnavailable(
            f"the model backend is unavailable after {len(attempts)} attempts: {last}"
        )
