"""Best-of-N: N samples in one batched call, the verifier picks the best.

With an outcome verifier the highest score wins (ties: higher mean log-prob). Without one
it falls back to a majority vote over extracted answers, ties broken by mean log-prob.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from backends.base import Backend, ThinkTags
from policies.base import Budget, Candidate, Clock, Problem, Strategy, StrategyResult
from policies.common import (
    call_until,
    candidate_of,
    finish,
    halve_samples,
    mean_logprob,
    out_of_time,
    request_for,
    score_all,
    vote,
)
from tasks.task import Task

if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate


class BestOfN(Strategy):
    """``budget.samples`` samples of one prompt from one shared prefill."""

    name = "best_of_n"

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The best of N; ``stop_reason`` verified, budget or deadline."""
        started = clock()
        req = request_for(
            problem,
            n=budget.samples,
            max_tokens=budget.max_tokens,
            temperature=budget.temperature,
            logprobs=backend.capabilities.free_logprobs,
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        cands = [candidate_of(c, problem.task) for c in res.completions]
        lp = {id(c): mean_logprob(comp) for c, comp in zip(cands, res.completions, strict=True)}
        spent, verified = await score_all(problem, cands)
        chosen = pick(cands, lp, problem.task)
        return finish(
            self.name,
            chosen=chosen,
            candidates=cands,
            prompt_tokens=res.prompt_tokens,
            generated_tokens=res.completion_tokens,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=len(cands),
            planned=budget.samples,
            stop_reason="verified" if verified else "budget",
        )

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Only where candidates can be told apart (answers to vote on, or a verifier)."""
        return est.selectable

    @classmethod
    def arm_name(cls, budget: Budget) -> str:
        """``best_of_n@N``: each N is its own arm."""
        return f"{cls.name}@{budget.samples}"

    @classmethod
    def parallel_samples(cls, budget: Budget) -> int:
        """All N in one call."""
        return budget.samples

    @classmethod
    def max_generated_tokens(cls, budget: Budget, think: ThinkTags | None = None) -> int:
        """Every sample at its token cap."""
        return budget.samples * budget.max_tokens

    @classmethod
    def fixed_samples(cls, budget: Budget) -> int | None:
        """All N, always."""
        return budget.samples

    @classmethod
    def shrink(cls, budget: Budget) -> Budget | None:
        """Half the samples (it draws them all in one call)."""
        return halve_samples(budget)


def pick(cands: list[Candidate], lp: dict[int, float], task: Task) -> Candidate:
    """Highest verifier score (then log-prob), or the majority answer (then log-prob)."""
    if task.verifier is not None and any(c.score is not None for c in cands):
        return max(cands, key=lambda c: (c.score if c.score is not None else -1.0, lp[id(c)]))
    ranking = vote([c.answer for c in cands], task)
    if ranking:
        top = ranking[0][0]
        pool = [c for c in cands if task.vote_key(c.answer) == top]
        return max(pool, key=lambda c: lp[id(c)])
    return max(cands, key=lambda c: lp[id(c)])
