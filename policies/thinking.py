"""Budget forcing for reasoning models: think up to B tokens, close the block, answer.

A model that thinks between tags (``<think>`` ... ``</think>``) is given a real thinking
budget: it thinks (through the raw-prompt endpoint, in the model's own chat template) until
it closes the block itself or the budget runs out; then the router closes the block and the
model writes its answer in at most ``answer_max_tokens`` more (s1's budget forcing). The
thinking is returned as ``reasoning`` and counted as hidden tokens; the answer is the visible
text.
"""

from __future__ import annotations

from backends.base import Backend, GenerationRequest, GenerationResult, ThinkTags
from policies.base import Budget, Candidate, Clock, Problem, StopReason, StrategyResult
from policies.common import base_prompt, call_until, finish, out_of_time, request_for, score_all


async def think_then_answer(
    name: str,
    problem: Problem,
    backend: Backend,
    budget: Budget,
    think: ThinkTags,
    deadline: float,
    clock: Clock,
) -> StrategyResult:
    """One thinking block of at most ``budget.max_tokens`` and the answer after it.

    ``stop_reason``: answered (the model closed its thinking itself), budget (the router
    closed it), verified (an exact verifier accepted the answer) or deadline. ``samples``
    counts the two calls.
    """
    started = clock()
    base = await base_prompt(problem, backend)
    opened = base if base.rstrip().endswith(think.open) else base + think.open + "\n"
    res = await call_until(
        backend, _thinking_request(problem, budget, think, opened), deadline, clock
    )
    if res is None:
        return out_of_time(name, started, clock)
    thinking = res.completions[0]
    stop: StopReason = "budget" if thinking.finish_reason == "length" else "answered"
    ans = await call_until(
        backend, _answer_request(problem, think, opened, thinking.text), deadline, clock
    )
    if ans is None:
        return _cut_after_thinking(name, res, started, clock)
    comp = ans.completions[0]
    cand = Candidate(
        text=comp.text,
        tokens=comp.tokens,
        answer=problem.task.answer_of(comp.text),
        finish_reason=comp.finish_reason,
    )
    spent, verified = await score_all(problem, [cand])
    result = finish(
        name,
        chosen=cand,
        candidates=[cand],
        prompt_tokens=res.prompt_tokens,
        generated_tokens=res.completion_tokens + ans.completion_tokens,
        verifier_tokens=spent,
        started=started,
        clock=clock,
        samples=2,
        stop_reason="verified" if verified else stop,
    )
    result.reasoning = thinking.text.strip()
    return result


def _thinking_request(
    problem: Problem, budget: Budget, think: ThinkTags, opened: str
) -> GenerationRequest:
    """The first call of ``think_then_answer``: think from the opened block, at most
    ``budget.max_tokens``, until the model closes the block itself."""
    return request_for(
        problem,
        n=1,
        max_tokens=budget.max_tokens,
        temperature=budget.temperature,
        stop=[think.close],
        prompt=opened,
    )


def _answer_request(
    problem: Problem, think: ThinkTags, opened: str, thinking: str
) -> GenerationRequest:
    """The second call of ``think_then_answer``: the block closed after ``thinking`` and a
    greedy answer of at most ``think.answer_max_tokens``."""
    return request_for(
        problem,
        n=1,
        max_tokens=think.answer_max_tokens,
        temperature=0.0,
        prompt=opened + thinking.rstrip() + "\n" + think.close + "\n\n",
    )


def _cut_after_thinking(
    name: str, thinking: GenerationResult, started: float, clock: Clock
) -> StrategyResult:
    """The result when the deadline cut the answer call: no answer, the thinking call's
    tokens counted as hidden and one of the two planned calls made."""
    return finish(
        name,
        chosen=None,
        candidates=[],
        prompt_tokens=thinking.prompt_tokens,
        generated_tokens=thinking.completion_tokens,
        verifier_tokens=0,
        started=started,
        clock=clock,
        samples=1,
        stop_reason="deadline",
        planned=2,
    )
