"""Bounded reasoning: one chain of thought within a thinking-token budget.

The model reasons (at ``budget.temperature``, greedy by default) until an ``Answer:`` line
appears; anything generated after that line is cut and counted as hidden. If the budget runs
out first then, like budget forcing, it appends ``Answer:`` and lets the model state an answer
in a few more tokens rather than return none.

With an *exact* process verifier (the Game of 24 step checker) the chain also corrects
itself: when a line fails the check (invented arithmetic, a wrong final expression) the
chain backs up to its last valid line and continues from there with a sampled continuation,
until an answer line passes or the thinking budget (``budget.max_tokens`` generated tokens in
all) is spent. It stays one sequential chain, so it costs one call when the first trace is
right (then it is exactly the greedy trace) and a few more on hard items: between single pass
and guided search in both tokens and accuracy. Without such a verifier it is one call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.base import Backend, Completion, GenerationResult, ThinkTags
from backends.verifiers.base import ProcessVerifier, VerifierError
from policies.base import (
    STRUCTURED_REFUSAL,
    Budget,
    Candidate,
    Clock,
    Problem,
    StopReason,
    Strategy,
    StrategyResult,
    offset_seed,
)
from policies.common import (
    base_prompt,
    call_until,
    finish,
    out_of_time,
    request_for,
    score_all,
)
from policies.thinking import think_then_answer
from tasks.task import Task

if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate

FORCED_ANSWER_TOKENS = 24
#: temperature of a continuation after a rejected line (greedy would repeat the same line)
RETRY_TEMPERATURE = 0.8
#: a continuation is not started with fewer budget tokens left than this
MIN_CONTINUATION_TOKENS = 8


def cut_after_answer(text: str) -> str:
    """Text up to and including the first ``Answer:`` line."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip().startswith("Answer:"):
            return "\n".join(lines[: i + 1])
    return text


@dataclass
class _Segment:
    """A kept piece of the chain and the tokens it took (estimated by its share of a call)."""

    text: str
    tokens: int


def _kept(comp: Completion, text: str) -> _Segment:
    """The part ``text`` (a prefix of ``comp.text``) with its share of ``comp.tokens``.

    Tokens after the kept prefix were generated but are not shown: they become hidden. The
    backend reports tokens per completion only, so the split is by character share.
    """
    if text == comp.text:
        return _Segment(text, comp.tokens)
    share = round(comp.tokens * len(text) / max(1, len(comp.text)))
    return _Segment(text, max(1, share) if text else 0)


def _first_rejected(verifier: ProcessVerifier, problem: Problem, lines: list[str]) -> int | None:
    """Index of the first line the exact step checker rejects, None if all pass (or it
    cannot check this problem)."""
    try:
        scores = verifier.score_steps(problem.text, lines)
    except VerifierError:
        return None
    for i, s in enumerate(scores):
        if s <= 0.0:
            return i
    return None


def _exact_checker(problem: Problem) -> ProcessVerifier | None:
    """The problem's verifier when it is an exact step checker (the chain then corrects
    itself line by line), else None (the chain is one call)."""
    verifier = problem.verifier
    return verifier if isinstance(verifier, ProcessVerifier) and verifier.exact else None


def _chain_candidate(segments: list[_Segment], task: Task, finish_reason: str) -> Candidate:
    """The kept chain as the candidate ``BoundedReasoning.run`` returns: its text, tokens
    and answer (None when no answer line was kept, which makes it force one)."""
    text = "".join(s.text for s in segments)
    return Candidate(
        text=text,
        tokens=sum(s.tokens for s in segments),
        answer=task.answer_of(text),
        finish_reason=finish_reason,
    )


def _with_forced_answer(
    cand: Candidate, extra_text: str, extra_tokens: int, task: Task
) -> Candidate:
    """``cand`` extended by a forced answer (``BoundedReasoning._force_answer``'s text and
    tokens), re-parsed for its answer; it ends on the forced line's stop."""
    text = cand.text + extra_text
    return Candidate(
        text=text,
        tokens=cand.tokens + extra_tokens,
        answer=task.answer_of(text),
        finish_reason="stop",
    )


class BoundedReasoning(Strategy):
    """Reason within ``budget.max_tokens``; stop at the first (accepted) answer line."""

    name = "bounded_reasoning"
    takes_client_temperature = True

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The reasoning trace and its answer.

        ``stop_reason``: verified (an exact verifier accepted the answer), answered (an answer
        line, no exact verifier), budget (the thinking budget ran out: the answer was forced
        or the last one was rejected) or deadline. ``samples`` counts the calls that extended
        the chain.
        """
        if problem.think is not None:
            return await think_then_answer(
                self.name, problem, backend, budget, problem.think, deadline, clock
            )
        started = clock()
        req = request_for(
            problem, n=1, max_tokens=budget.max_tokens, temperature=budget.temperature
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return out_of_time(self.name, started, clock)
        segments, generated, calls, stop = await self._chain(
            problem, backend, budget, deadline, clock, res
        )
        cand = _chain_candidate(segments, problem.task, res.completions[0].finish_reason)
        if cand.answer is None and stop != "deadline":
            stop = "budget"
            forced = await self._force_answer(problem, backend, cand.text, deadline, clock)
            if forced is not None:
                cand = _with_forced_answer(cand, *forced, problem.task)
                generated += forced[1]
        spent, verified = await score_all(problem, [cand])
        if verified:
            stop = "verified"
        return finish(
            self.name,
            chosen=cand,
            candidates=[cand],
            prompt_tokens=res.prompt_tokens,
            generated_tokens=generated,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=calls,
            stop_reason=stop,
        )

    @classmethod
    def calls_made(cls, budget: Budget, result: StrategyResult) -> int | None:
        """The calls that extended the chain, one after the other."""
        return max(1, result.samples)

    @classmethod
    def max_generated_tokens(cls, budget: Budget, think: ThinkTags | None = None) -> int:
        """The reasoning budget and the forced answer after it."""
        return budget.max_tokens + (think.answer_max_tokens if think else FORCED_ANSWER_TOKENS)

    @classmethod
    def calls_vary(cls) -> bool:
        """Backtracking on an exact step checker makes a few calls on hard items."""
        return True

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Offered where it does more than a greedy answer: a model that thinks (a real
        thinking budget), or an exact step checker to back up on (with continuations).

        Otherwise it is one greedy chain, token for token the probe's (or single pass's), so
        it could only cost what single pass gets for free: on the bundled arithmetic the two
        agreed on all 112 questions whose probe finished, while the router, reading noise in
        its per-arm models, sent 58 of them here."""
        if est.structured:
            return False
        if est.reasoning:
            return True
        return est.step_checker and est.continuations

    @classmethod
    def unavailable(cls, est: DifficultyEstimate) -> str | None:
        """It forces answers after a thinking budget and backs up steps as raw prompts:
        not for an answer that must be whole JSON or tool calls."""
        return STRUCTURED_REFUSAL.format(name=cls.name) if est.structured else None

    async def _chain(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock,
        res: GenerationResult,
    ) -> tuple[list[_Segment], int, int, StopReason]:
        """The chain kept from the first call ``res``, cut after its answer line and, with an
        exact step checker, corrected (``_correct``); returns (kept segments, tokens
        generated, calls, stop reason)."""
        comp = res.completions[0]
        segments = [_kept(comp, cut_after_answer(comp.text))]
        checker = _exact_checker(problem)
        if checker is None:
            return segments, res.completion_tokens, 1, "answered"
        return await self._correct(
            problem, backend, checker, budget, deadline, clock, segments, res.completion_tokens
        )

    async def _correct(
        self,
        problem: Problem,
        backend: Backend,
        checker: ProcessVerifier,
        budget: Budget,
        deadline: float,
        clock: Clock,
        segments: list[_Segment],
        generated: int,
    ) -> tuple[list[_Segment], int, int, StopReason]:
        """Back up to the last valid line and continue until an answer passes or the budget
        is spent; returns (kept segments, tokens generated, calls, stop reason)."""
        base = await base_prompt(problem, backend)
        calls = 1
        while True:
            text = "".join(s.text for s in segments)
            lines = text.split("\n")
            bad = _first_rejected(checker, problem, lines)
            if bad is None:
                # Every line passed; with an answer line that means the answer is verified.
                return segments, generated, calls, "answered"
            left = budget.max_tokens - generated
            if left < MIN_CONTINUATION_TOKENS:
                return segments, generated, calls, "budget"
            segments = _truncate(segments, len("\n".join(lines[:bad]) + "\n") if bad else 0)
            prefix = "".join(s.text for s in segments)
            req = request_for(
                problem,
                n=1,
                max_tokens=left,
                temperature=max(budget.temperature, RETRY_TEMPERATURE),
                prompt=base + prefix,
                seed=offset_seed(problem.seed, 7_919 * calls),
            )
            res = await call_until(backend, req, deadline, clock)
            if res is None:
                return segments, generated, calls, "deadline"
            calls += 1
            comp = res.completions[0]
            if res.completion_tokens <= 0:
                return segments, generated, calls, "budget"  # a backend that makes no progress
            generated += res.completion_tokens
            segments.append(_kept(comp, cut_after_answer(comp.text)))

    async def _force_answer(
        self,
        problem: Problem,
        backend: Backend,
        text: str,
        deadline: float,
        clock: Clock,
    ) -> tuple[str, int] | None:
        """``Answer: `` appended and a short greedy answer; (added text, tokens) or None."""
        base = await base_prompt(problem, backend)
        suffix = ("" if text.endswith("\n") or not text else "\n") + "Answer: "
        req = request_for(
            problem,
            n=1,
            max_tokens=FORCED_ANSWER_TOKENS,
            temperature=0.0,
            prompt=base + text + suffix,
            stop=["\n"],
        )
        res = await call_until(backend, req, deadline, clock)
        if res is None:
            return None
        return suffix + res.completions[0].text, res.completion_tokens


def _truncate(segments: list[_Segment], keep_chars: int) -> list[_Segment]:
    """The first ``keep_chars`` characters of the chain, tokens cut in proportion."""
    out: list[_Segment] = []
    left = keep_chars
    for s in segments:
        if left <= 0:
            break
        if len(s.text) <= left:
            out.append(s)
            left -= len(s.text)
            continue
        share = round(s.tokens * left / max(1, len(s.text)))
        out.append(_Segment(s.text[:left], max(1, share)))
        left = 0
    return out
