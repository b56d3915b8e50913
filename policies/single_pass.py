"""Single pass: one greedy (or low-temperature) answer, the cheapest strategy."""

from __future__ import annotations

import time

from backends.base import Backend
from backends.verifiers.base import Verifier
from policies.base import Budget, Clock, Problem, Strategy, StrategyResult
from policies.common import call_until, candidate_of, finish, out_of_time, request_for, score_all


class SinglePass(Strategy):
    """One sample at ``budget.temperature`` (0 = greedy) within ``budget.max_tokens``."""

    name = "single_pass"

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        verifier: Verifier | None,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The one completion; ``stop_reason`` is answered, budget or deadline."""
        started = clock()
        req = request_for(
            problem, n=1, max_tokens=budget.max_tokens, temperature=budget.temperature
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        cand = candidate_of(res.completions[0])
        spent, _ = score_all(verifier, problem, [cand])
        return finish(
            self.name,
            chosen=cand,
            candidates=[cand],
            prompt_tokens=res.prompt_tokens,
            generated_tokens=res.completion_tokens,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=1,
            stop_reason="answered" if cand.answer is not None else "budget",
        )
