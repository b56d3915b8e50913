"""Bounded reasoning: chain-of-thought within a thinking-token budget.

It reasons until an ``Answer:`` line appears (anything after that line is cut and counted
as hidden) or the budget is spent; then, like budget forcing, it appends ``Answer:`` and
lets the model state an answer in a few more tokens rather than return none.
"""

from __future__ import annotations

import time

from backends.base import Backend
from backends.verifiers.base import Verifier
from backends.verifiers.numeric import extract_answer
from policies.base import (
    Budget,
    Candidate,
    Clock,
    Problem,
    StopReason,
    Strategy,
    StrategyResult,
)
from policies.common import call_until, finish, out_of_time, request_for, score_all

FORCED_ANSWER_TOKENS = 24


def cut_after_answer(text: str) -> str:
    """Text up to and including the first ``Answer:`` line."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip().startswith("Answer:"):
            return "\n".join(lines[: i + 1])
    return text


class BoundedReasoning(Strategy):
    """Reason within ``budget.max_tokens``; stop at the first answer line."""

    name = "bounded_reasoning"

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        verifier: Verifier | None,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The reasoning trace and its answer; forced to answer if the budget runs out."""
        started = clock()
        req = request_for(
            problem, n=1, max_tokens=budget.max_tokens, temperature=budget.temperature
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        comp = res.completions[0]
        generated = res.completion_tokens
        text = cut_after_answer(comp.text)
        # Tokens after the answer line are spent but not shown: visible gets a share by length.
        visible = (
            comp.tokens
            if text == comp.text
            else max(1, round(comp.tokens * len(text) / max(1, len(comp.text))))
        )
        cand = Candidate(
            text=text, tokens=visible, answer=extract_answer(text), finish_reason=comp.finish_reason
        )
        stop: StopReason = "answered"
        if cand.answer is None:
            stop = "budget"
            forced = await self._force_answer(problem, backend, text, budget, deadline, clock)
            if forced is not None:
                extra_text, extra_tokens = forced
                generated += extra_tokens
                cand = Candidate(
                    text=text + extra_text,
                    tokens=cand.tokens + extra_tokens,
                    answer=extract_answer(text + extra_text),
                    finish_reason="stop",
                )
        spent, _ = score_all(verifier, problem, [cand])
        return finish(
            self.name,
            chosen=cand,
            candidates=[cand],
            prompt_tokens=res.prompt_tokens,
            generated_tokens=generated,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=1,
            stop_reason=stop,
        )

    async def _force_answer(
        self,
        problem: Problem,
        backend: Backend,
        text: str,
        budget: Budget,
        deadline: float,
        clock: Clock,
    ) -> tuple[str, int] | None:
        base = problem.prompt
        if base is None and problem.messages is not None:
            base = await backend.render_chat(problem.messages)
        suffix = ("" if text.endswith("\n") or not text else "\n") + "Answer: "
        req = request_for(
            problem,
            n=1,
            max_tokens=FORCED_ANSWER_TOKENS,
            temperature=0.0,
            prompt=(base or "") + text + suffix,
            stop=["\n"],
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return None
        return suffix + res.completions[0].text, res.completion_tokens
