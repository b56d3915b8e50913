"""Helpers shared by the strategies: requests, deadline-bounded calls, voting, results."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence

from backends.base import Backend, Completion, GenerationRequest, GenerationResult
from backends.verifiers.base import VerifierError
from policies.base import (
    Budget,
    Candidate,
    Clock,
    Problem,
    StopReason,
    StrategyResult,
    offset_seed,
)
from tasks.task import Task


def request_for(
    problem: Problem,
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    seed: int | None = None,
    stop: list[str] | None = None,
    prompt: str | None = None,
    logprobs: bool = False,
) -> GenerationRequest:
    """A generation request for ``problem`` (or for an explicit continuation ``prompt``)."""
    use_prompt = prompt if prompt is not None else problem.prompt
    return GenerationRequest(
        prompt=use_prompt,
        messages=None if use_prompt is not None else problem.messages,
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        # Wrapped into the seed range once more: every derived seed passes through here.
        seed=offset_seed(seed if seed is not None else problem.seed, 0),
        stop=list(stop if stop is not None else problem.stop),
        logprobs=logprobs,
        top_logprobs=problem.top_logprobs,
        params=problem.params,
        top_p=problem.top_p,
    )


async def base_prompt(problem: Problem, backend: Backend) -> str:
    """The raw prompt a continuation extends: ``problem.prompt``, or its chat messages with
    the backend's template applied."""
    if problem.prompt is not None:
        return problem.prompt
    if problem.messages is None:
        return ""
    return await backend.render_chat(problem.messages)


async def call_until(
    backend: Backend, request: GenerationRequest, deadline: float, clock: Clock
) -> GenerationResult | None:
    """``backend.generate`` bounded by the deadline; None when time ran out first."""
    remaining = deadline - clock()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(backend.generate(request), timeout=remaining)
    except TimeoutError:
        return None


def candidate_of(c: Completion, task: Task) -> Candidate:
    """A ``Candidate`` with its final answer as ``task``'s answer format extracts it (from
    the text, or from the tool calls of a tool-call task)."""
    return Candidate(
        text=c.text,
        tokens=c.tokens,
        answer=task.answer_of(task.response_of(c.text, c.tool_calls)),
        finish_reason=c.finish_reason,
        logprob=mean_logprob(c) if c.token_logprobs else None,
        tool_calls=c.tool_calls,
        logprobs=c.logprobs,
    )


def mean_logprob(c: Completion) -> float:
    """Mean token log-prob (``-inf`` when not requested)."""
    if not c.token_logprobs:
        return -math.inf
    return sum(c.token_logprobs) / len(c.token_logprobs)


def vote(answers: Sequence[str | None], task: Task) -> list[tuple[str, int]]:
    """``task``'s voting keys of the answers with their counts, most common first (an
    answer without a key never wins)."""
    counts = Counter(k for k in (task.vote_key(x) for x in answers) if k is not None)
    return counts.most_common()


def finish(
    name: str,
    *,
    chosen: Candidate | None,
    candidates: list[Candidate],
    prompt_tokens: int,
    generated_tokens: int,
    verifier_tokens: int,
    started: float,
    clock: Clock,
    samples: int,
    stop_reason: StopReason,
    planned: int | None = None,
) -> StrategyResult:
    """A ``StrategyResult`` whose visible + hidden tokens equal ``generated_tokens``.

    ``samples`` is what the strategy got from the backend and ``planned`` what it asked
    for (the same when not given): a backend that returns fewer shows as a shortfall.
    """
    visible = chosen.tokens if chosen is not None else 0
    return StrategyResult(
        strategy=name,
        text=chosen.text if chosen is not None else "",
        answer=chosen.answer if chosen is not None else None,
        candidates=candidates,
        prompt_tokens=prompt_tokens,
        visible_tokens=visible,
        hidden_tokens=generated_tokens - visible,
        verifier_tokens=verifier_tokens,
        wall_ms=(clock() - started) * 1000,
        samples=samples,
        stop_reason=stop_reason,
        score=chosen.score if chosen is not None else None,
        finish_reason=chosen.finish_reason if chosen is not None else "stop",
        samples_planned=samples if planned is None else planned,
        tool_calls=chosen.tool_calls if chosen is not None else None,
        logprobs=chosen.logprobs if chosen is not None else None,
    )


def out_of_time(name: str, started: float, clock: Clock) -> StrategyResult:
    """The result of a strategy whose first call did not finish before the deadline."""
    return finish(
        name,
        chosen=None,
        candidates=[],
        prompt_tokens=0,
        generated_tokens=0,
        verifier_tokens=0,
        started=started,
        clock=clock,
        samples=0,
        stop_reason="deadline",
    )


async def score_all(problem: Problem, candidates: list[Candidate]) -> tuple[int, bool]:
    """Score candidates in place with the problem's verifier (one batch); returns (verifier
    tokens spent, any exactly verified). Without a verifier, or when it cannot judge this
    problem, nothing is scored."""
    verifier = problem.verifier
    if verifier is None or not candidates:
        return 0, False
    task = problem.task
    try:
        scores = await verifier.score_many(
            problem.text,
            [task.response_of(c.text, c.tool_calls) for c in candidates],
            problem.reference,
        )
    except VerifierError:
        return 0, False
    spent, verified = 0, False
    for c, score in zip(candidates, scores, strict=True):
        c.score = score
        spent += verifier.verifier_tokens(problem.text, c.text)
        verified = verified or (verifier.exact and score >= 1.0)
    return spent, verified


def halve_samples(budget: Budget) -> Budget | None:
    """``budget`` with half the samples (batches no larger than that), None at one sample."""
    if budget.samples <= 1:
        return None
    half = max(1, budget.samples // 2)
    return budget.model_copy(update={"samples": half, "batch_size": min(budget.batch_size, half)})
