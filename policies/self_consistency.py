"""Self-consistency with adaptive stopping.

Samples arrive in batches of ``budget.batch_size`` up to ``budget.samples``. After each
batch it stops when an exact verifier accepts a candidate (``verified``) or, by the
configured ``rule``:

- ``beta`` (the default): the leading answer is statistically settled by
  Adaptive-Consistency's Beta criterion, P(leader's share > runner-up's) >= ``threshold``
  (``settled``), or no majority is forming (``dispersed``): the leader holds at most
  ``dispersed_share`` of the votes so far (by default four samples, four answers), where
  more samples mostly buy a coin-flip between wrong answers;
- ``settled``: the full vote of ``budget.samples`` would keep the current leader with
  probability >= ``threshold`` (``policies/stopping.py``); it never stops on a scattered
  plurality, so it saves fewer samples where answers scatter.

The answer is the majority vote (ties by mean log-probability). Where an exact verifier
scored the samples, agreement is not evidence: every unverified answer is known to be
wrong, so only ``verified`` or the sample budget ends the run.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Literal

from backends.base import Backend, GenerationRequest, ThinkTags
from policies.base import (
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
    call_until,
    candidate_of,
    finish,
    halve_samples,
    mean_logprob,
    request_for,
    score_all,
    vote,
)
from policies.stopping import beta_settled, vote_settled
from tasks.task import Task

STOP_THRESHOLD = 0.95
DISPERSED_SHARE = 0.25
StopRule = Literal["settled", "beta"]
STOP_RULES: tuple[str, ...] = ("settled", "beta")


if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate


class SelfConsistency(Strategy):
    """Majority vote over samples drawn in small batches until settled."""

    name = "self_consistency"

    def __init__(
        self,
        threshold: float = STOP_THRESHOLD,
        adaptive: bool = True,
        rule: StopRule = "beta",
        dispersed_share: float = DISPERSED_SHARE,
    ) -> None:
        if rule not in STOP_RULES:
            raise ValueError(f"unknown stopping rule {rule!r}; valid: {', '.join(STOP_RULES)}")
        self.threshold = threshold
        self.adaptive = adaptive
        self.rule = rule
        self.dispersed_share = dispersed_share

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The majority answer; ``samples`` says how many were drawn before stopping."""
        started = clock()
        cands: list[Candidate] = []
        lp: dict[int, float] = {}
        prompt_tokens = generated = spent = 0
        stop: StopReason = "budget"
        batch = 0
        while len(cands) < budget.samples:
            req = _batch_request(problem, budget, len(cands), batch, backend)
            batch += 1
            res = await call_until(backend, req, deadline, clock)
            if res is None:
                stop = "deadline"
                break
            if not res.completions:
                break  # a backend that returns nothing: what was drawn is reported as such
            prompt_tokens = res.prompt_tokens
            generated += res.completion_tokens
            new = [candidate_of(c, problem.task) for c in res.completions]
            lp.update(
                {id(c): mean_logprob(comp) for c, comp in zip(new, res.completions, strict=True)}
            )
            s, verified = await score_all(problem, new)
            spent += s
            cands += new
            if verified:
                stop = "verified"
                break
            why = self._early_stop(cands, new, problem.task, budget.samples)
            if why is not None:
                stop = why
                break
        chosen = self._choose(cands, lp, stop, problem.task)
        return finish(
            self.name,
            chosen=chosen,
            candidates=cands,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            verifier_tokens=spent,
            started=started,
            clock=clock,
            samples=len(cands),
            stop_reason=stop,
            # What it meant to draw: all of them, unless its own rule stopped it first.
            planned=len(cands) if stop in ("settled", "dispersed", "verified") else budget.samples,
        )

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Only where candidates can be told apart (answers to vote on, or a verifier)."""
        return est.selectable

    @classmethod
    def arm_name(cls, budget: Budget) -> str:
        """``self_consistency@N``: each sample cap is its own arm."""
        return f"{cls.name}@{budget.samples}"

    @classmethod
    def parallel_samples(cls, budget: Budget) -> int:
        """One batch per call."""
        return min(budget.batch_size, budget.samples)

    @classmethod
    def max_generated_tokens(cls, budget: Budget, think: ThinkTags | None = None) -> int:
        """Every sample it may draw at its token cap."""
        return budget.samples * budget.max_tokens

    @classmethod
    def calls(cls, budget: Budget) -> float:
        """One call per batch, one after the other (at most)."""
        return float(math.ceil(budget.samples / max(1, budget.batch_size)))

    @classmethod
    def calls_made(cls, budget: Budget, result: StrategyResult) -> int | None:
        """The batches it drew before stopping."""
        return max(1, math.ceil(result.samples / max(1, budget.batch_size)))

    @classmethod
    def shrink(cls, budget: Budget) -> Budget | None:
        """Half the samples."""
        return halve_samples(budget)

    @classmethod
    def expected_samples(
        cls, budget: Budget, p_success: float, exact_verifier: bool
    ) -> float | None:
        """With an exact checker it stops at the first verified sample: the expected draw
        (``expected_samples``); otherwise the vote's stop is not priced (None)."""
        if not exact_verifier:
            return None
        return expected_samples(p_success, budget.samples, budget.batch_size)

    def _early_stop(
        self, cands: list[Candidate], new: list[Candidate], task: Task, planned: int
    ) -> StopReason | None:
        """Why to stop before ``planned`` samples after the batch ``new`` (None: draw on).

        Only an adaptive sampler stops early, and not on a batch an exact verifier scored:
        there every unverified answer is known to be wrong, so agreement is not evidence.
        """
        checked = task.exact and any(c.score is not None for c in new)
        if not self.adaptive or checked or len(cands) >= planned:
            return None
        return self._stop(cands, task, planned)

    def _stop(self, cands: list[Candidate], task: Task, planned: int) -> StopReason | None:
        """Why to stop after these samples (None: draw more), by the configured rule."""
        ranking = vote([c.answer for c in cands], task)
        counts = [v for _, v in ranking]
        if self.rule == "settled":
            unanswered = len(cands) - sum(counts)
            if vote_settled(counts, unanswered, len(cands), planned, self.threshold):
                return "settled"
            return None
        if beta_settled(counts, self.threshold):
            return "settled"
        leader = counts[0] if counts else 0
        return "dispersed" if leader <= self.dispersed_share * len(cands) else None

    def _choose(
        self, cands: list[Candidate], lp: dict[int, float], stop: StopReason, task: Task
    ) -> Candidate | None:
        if not cands:
            return None
        if stop == "verified":
            return max(cands, key=lambda c: (c.score or 0.0, lp[id(c)]))
        ranking = vote([c.answer for c in cands], task)
        if not ranking:
            return max(cands, key=lambda c: lp[id(c)])
        pool = [c for c in cands if task.vote_key(c.answer) == ranking[0][0]]
        return max(pool, key=lambda c: lp[id(c)])


def _batch_request(
    problem: Problem, budget: Budget, drawn: int, batch: int, backend: Backend
) -> GenerationRequest:
    """The request for batch number ``batch`` once ``drawn`` samples are in: at most
    ``budget.batch_size`` more, never past ``budget.samples``, with the batch's own seed
    (log-probabilities, the votes' tie-breaker, only where they cost nothing)."""
    return request_for(
        problem,
        n=min(budget.batch_size, budget.samples - drawn),
        max_tokens=budget.max_tokens,
        temperature=budget.temperature,
        seed=offset_seed(problem.seed, 7919 * batch),
        logprobs=backend.capabilities.free_logprobs,
    )


def expected_samples(p_success: float, samples: int, batch: int) -> float:
    """Samples an early-stopping sampler draws (batches of ``batch``, stop at the first
    verified one) when P(one of ``samples`` verifies) is ``p_success``.

    Independent samples with per-sample solve rate q = 1 - (1 - p)^(1/N); batch k is drawn
    only when the k batches before it all failed: sum_k b_k (1 - q)^(b * k).
    """
    n, b = max(1, samples), max(1, min(batch, samples))
    p = min(max(p_success, 0.0), 1 - 1e-9)
    fail = (1.0 - p) ** (1.0 / n)  # one sample fails
    total, drawn = 0.0, 0
    while drawn < n:
        size = min(b, n - drawn)
        total += size * fail**drawn
        drawn += size
    return total
