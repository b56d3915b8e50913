"""Single pass: one greedy (or low-temperature) answer, the cheapest strategy."""

from __future__ import annotations

import dataclasses
import time

from backends.base import Backend
from backends.verifiers.base import Verifier
from backends.verifiers.numeric import extract_answer
from policies.base import Budget, Clock, Problem, Strategy, StrategyResult
from policies.common import (
    base_prompt,
    call_until,
    candidate_of,
    finish,
    out_of_time,
    request_for,
    score_all,
)


class SinglePass(Strategy):
    """One sample at ``budget.temperature`` (0 = greedy) within ``budget.max_tokens``.

    Given a ``problem.prefix`` (a greedy start of the answer, e.g. the router's cut probe) it
    generates only the rest, within what is left of ``budget.max_tokens``.
    """

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
        prompt = None
        max_tokens = budget.max_tokens
        if problem.prefix:
            # Continue the greedy prefix (the probe) rather than generate it again.
            prompt = await base_prompt(problem, backend) + problem.prefix
            max_tokens = max(1, budget.max_tokens - problem.prefix_tokens)
        req = request_for(
            problem, n=1, max_tokens=max_tokens, temperature=budget.temperature, prompt=prompt
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        cand = candidate_of(res.completions[0])
        if problem.prefix:
            # The prefix's tokens were generated (and counted) by whoever made it.
            text = problem.prefix + cand.text
            cand = dataclasses.replace(cand, text=text, answer=extract_answer(text))
        spent, _ = score_all(verifier, problem, [cand])
        return finish(
            self.name,
            chosen=cand,
            candidates=[cand],
            prompt_tokens=max(0, res.prompt_tokens - problem.prefix_tokens),
            generated_tokens=res.completion_tokens,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=1,
            stop_reason="answered" if cand.answer is not None else "budget",
        )
