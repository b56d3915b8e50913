"""Best-of-N: N samples in one batched call, the verifier picks the best.

With an outcome verifier the highest score wins (ties: higher mean log-prob). Without one
it falls back to a majority vote over extracted answers, ties broken by mean log-prob.
"""

from __future__ import annotations

import time

from backends.base import Backend
from backends.verifiers.numeric import normalize_answer
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
            logprobs=True,
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        cands = [candidate_of(c) for c in res.completions]
        lp = {id(c): mean_logprob(comp) for c, comp in zip(cands, res.completions, strict=True)}
        spent, verified = score_all(problem, cands)
        chosen = pick(cands, lp, use_scores=problem.verifier is not None)
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
            stop_reason="verified" if verified else "budget",
        )

    @classmethod
    def arm_name(cls, budget: Budget) -> str:
        """``best_of_n@N``: each N is its own arm."""
        return f"{cls.name}@{budget.samples}"

    @classmethod
    def fixed_samples(cls, budget: Budget) -> int | None:
        """All N, always."""
        return budget.samples

    @classmethod
    def shrink(cls, budget: Budget) -> Budget | None:
        """Half the samples (it draws them all in one call)."""
        return halve_samples(budget)


def pick(cands: list[Candidate], lp: dict[int, float], *, use_scores: bool) -> Candidate:
    """Highest verifier score (then log-prob), or the majority answer (then log-prob)."""
    if use_scores and any(c.score is not None for c in cands):
        return max(cands, key=lambda c: (c.score if c.score is not None else -1.0, lp[id(c)]))
    ranking = vote([c.answer for c in cands])
    if ranking:
        top = ranking[0][0]
        pool = [c for c in cands if normalize_answer(c.answer) == top]
        return max(pool, key=lambda c: lp[id(c)])
    return max(cands, key=lambda c: lp[id(c)])
