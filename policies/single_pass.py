"""Single pass: one greedy (or low-temperature) answer, the cheapest strategy."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from backends.base import Backend
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

if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate


class SinglePass(Strategy):
    """One sample at ``budget.temperature`` (0 = greedy) within ``budget.max_tokens``.

    Given a ``problem.prefix`` (a greedy start of the answer, e.g. the router's cut probe) it
    generates only the rest, within what is left of ``budget.max_tokens``.
    """

    name = "single_pass"
    takes_client_temperature = True

    async def run(
        self,
        problem: Problem,
        backend: Backend,
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
        spent, _ = score_all(problem, [cand])
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

    async def run_copies(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        n: int,
        clock: Clock = time.monotonic,
    ) -> list[StrategyResult]:
        """``n`` samples of one prompt from one backend call (one shared prefill)."""
        if n == 1:
            return [await self.run(problem, backend, budget, deadline, clock)]
        started = clock()
        req = request_for(
            problem, n=n, max_tokens=budget.max_tokens, temperature=budget.temperature
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return [out_of_time(self.name, started, clock)]
        out = []
        for comp in res.completions:
            cand = candidate_of(comp)
            spent, _ = score_all(problem, [cand])
            out.append(
                finish(
                    self.name,
                    chosen=cand,
                    candidates=[cand],
                    prompt_tokens=res.prompt_tokens,
                    generated_tokens=comp.tokens,
                    verifier_tokens=spent,
                    started=started,
                    clock=clock,
                    samples=1,
                    stop_reason="answered" if cand.answer is not None else "budget",
                )
            )
        return out

    @classmethod
    def fixed_samples(cls, budget: Budget) -> int | None:
        """Always one."""
        return 1

    @classmethod
    def reuses_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """A greedy single pass is the probe's completion when that one is complete."""
        return est.probe_reusable and budget.temperature == 0

    @classmethod
    def continues_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """A greedy single pass starts with exactly the probe's tokens: when the probe was
        cut by its token limit, single pass only generates the rest."""
        return (
            not est.probe_reusable
            and not est.probe_finished
            and est.probe_tokens > 0
            and budget.temperature == 0
            and budget.max_tokens > est.probe_tokens
        )
