"""Single pass: one greedy (or low-temperature) answer, the cheapest strategy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from backends.base import Backend, Completion, GenerationRequest, StreamDelta
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
        req = await self._request(problem, backend, budget)
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        return await self._result(problem, res.completions[0], res.prompt_tokens, started, clock)

    async def stream(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> AsyncIterator[str | StreamDelta | StrategyResult]:
        """The completion as the backend produces it: text pieces (a ``StreamDelta`` for a
        piece that carries tool-call deltas or the client's logprobs), then the
        ``StrategyResult`` (as ``run`` would return it). A cut probe's text comes first.

        At the deadline the stream ends with what arrived (``stop_reason`` deadline).
        """
        started = clock()
        if problem.prefix:
            yield problem.prefix
        req = await self._request(problem, backend, budget)
        pieces: list[str] = []
        final: StreamDelta | None = None
        stream = backend.stream(req)
        try:
            async with asyncio.timeout(max(0.0, deadline - clock())):
                async for delta in stream:
                    if delta.completion is not None:
                        final = delta
                        continue
                    if delta.text:
                        pieces.append(delta.text)
                    if delta.tool_calls is not None or delta.logprobs is not None:
                        yield delta
                    elif delta.text:
                        yield delta.text
        except TimeoutError:
            final = None
        finally:
            # Ending the stream early (deadline, a client gone) cancels the backend's work.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        if final is None or final.completion is None:
            text = "".join(pieces)
            cut = Completion(
                text=text, tokens=backend.count_tokens(text) or len(pieces), finish_reason="length"
            )
            result = await self._result(problem, cut, 0, started, clock)
            result.stop_reason = "deadline"
            yield result
            return
        yield await self._result(problem, final.completion, final.prompt_tokens, started, clock)

    async def _request(
        self, problem: Problem, backend: Backend, budget: Budget
    ) -> GenerationRequest:
        """The one generation request: the problem, or the rest after its greedy prefix."""
        prompt = None
        max_tokens = budget.max_tokens
        if problem.prefix:
            # Continue the greedy prefix (the probe) rather than generate it again.
            prompt = await base_prompt(problem, backend) + problem.prefix
            max_tokens = max(1, budget.max_tokens - problem.prefix_tokens)
        return request_for(
            problem, n=1, max_tokens=max_tokens, temperature=budget.temperature, prompt=prompt
        )

    async def _result(
        self,
        problem: Problem,
        comp: Completion,
        prompt_tokens: int,
        started: float,
        clock: Clock,
    ) -> StrategyResult:
        """The result of one completion (after the problem's prefix, if it had one)."""
        cand = candidate_of(comp, problem.task)
        if problem.prefix:
            # The prefix's tokens were generated (and counted) by whoever made it.
            text = problem.prefix + cand.text
            cand = dataclasses.replace(cand, text=text, answer=problem.task.answer_of(text))
        spent, _ = await score_all(problem, [cand])
        return finish(
            self.name,
            chosen=cand,
            candidates=[cand],
            prompt_tokens=max(0, prompt_tokens - problem.prefix_tokens),
            generated_tokens=comp.tokens,
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
            cand = candidate_of(comp, problem.task)
            spent, _ = await score_all(problem, [cand])
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
        if out and len(out) < n:
            # The backend returned fewer choices than asked: the shortfall shows in the
            # totals (planned n, drawn len(out)), not hidden.
            out[0].samples_planned += n - len(out)
        return out

    @classmethod
    def fixed_samples(cls, budget: Budget) -> int | None:
        """Always one."""
        return 1

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Not for a model that thinks first: within an answer's token budget its thinking
        would be cut before any answer (a thinking budget is the cheapest arm there)."""
        return not est.reasoning

    @classmethod
    def reuses_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """A greedy single pass is the probe's completion when that one is complete."""
        return est.probe_reusable and budget.temperature == 0

    @classmethod
    def continues_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """A greedy single pass starts with exactly the probe's tokens: when the probe was
        cut by its token limit, single pass only generates the rest."""
        return (
            est.continuations
            and not est.probe_reusable
            and not est.probe_finished
            and est.probe_tokens > 0
            and budget.temperature == 0
            and budget.max_tokens > est.probe_tokens
        )
