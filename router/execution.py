"""Running a decision: the probe's answer reused or continued, else the chosen strategy with
one retry and a single-pass fallback on backend failures, ``n`` copies at once.

Backend and strategy failures become ``APIError`` here (400 when the model refuses the
request, 408 when the deadline passes first, 503 when the backend stays down).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from backends.base import Backend, BackendError, ThinkTags
from difficulty.probe import ProbeResult
from difficulty.profiles import Task
from policies.base import Problem, StrategyError, StrategyResult
from policies.budget import Budget
from policies.decision import Decision
from policies.registry import FALLBACK_STRATEGY
from policies.settings import StrategiesSettings
from router.errors import APIError, bad_request
from router.metrics import Metrics

log = logging.getLogger("acr.service")


@dataclass(frozen=True)
class Ask:
    """What the client asked beyond the decision: ``n`` choices, and its own caps."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None

    def plain(self, problem: Problem) -> bool:
        """One greedy choice, no stop strings and no token cap tighter than the probe had:
        a request the probe can answer or start."""
        return (
            self.n == 1
            and (self.temperature or 0.0) <= 0
            and not problem.stop
            and self.max_tokens is None
        )


@dataclass
class Execution:
    """The results of running a decision, and whether the probe answered or began it."""

    results: list[StrategyResult]
    probe_reused: bool = False
    probe_continued: bool = False


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

    async def run(
        self, problem: Problem, decision: Decision, ask: Ask, deadline: float
    ) -> Execution:
        """Serve ``decision`` for ``problem`` by ``deadline`` (monotonic seconds)."""
        plain = ask.plain(problem)
        if plain and decision.reuse_probe and decision.probe is not None:
            result = probe_as_result(decision.probe, decision.strategy, problem.task)
            return Execution([result], True)
        go_on = continued(problem, decision.probe) if plain and decision.continue_probe else None
        results = await self._with_fallback(go_on or problem, decision, ask.n, deadline)
        if problem.think is not None:
            results = [self._thinking_apart(r, problem.think) for r in results]
        return Execution(results, probe_continued=go_on is not None)

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
    ) -> list[StrategyResult]:
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
                if not exc.retryable:
                    raise APIError(
                        400, f"the model refused the request: {exc}", code="backend_refused"
                    ) from exc
                log.warning("backend failed (attempt %d, %s): %s", i + 1, name, exc)
                continue
            except StrategyError as exc:
                raise bad_request(str(exc), "acr.budget") from exc
            if name != decision.strategy:
                decision.reason += f"; fell back to {name} after backend errors"
            return results
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
