"""Step-level beam search (Tree-of-Thoughts BFS) guided by a process scorer.

A step is one line. Each of the ``beam_width`` states is expanded into ``expansions``
proposals of its next line with one backend call per state (``n`` samples share the state's
prefix prefill); the calls run concurrently so the backend can batch them. Proposals are
deduplicated and scored by the verifier's ``score_steps`` (an exact step checker or a
learned PRM); without one, by how often they were proposed and their log-prob. An
``Answer:`` line finishes a beam; an exactly verified answer ends the search.

When every child of a round is pruned (all proposals invalid, or every finished answer
rejected by an exact verifier) the search does not give up while it has budget: dead states
are sampled again with fresh seeds, and a state that keeps failing yields to the valid states
set aside earlier (backtracking, as Tree of Thoughts' DFS does). The budget is
``max_tokens * beam_width * expansions`` generated tokens in all (the tokens of ``beam_width``
full traces of ``expansions`` proposals each), at most ``max_steps`` lines per trace and
``ROUNDS_PER_STEP * max_steps`` rounds of expansion.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backends.base import Backend, GenerationResult, ThinkTags
from backends.verifiers.base import ProcessVerifier, Verifier, VerifierError
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
from policies.common import base_prompt, call_until, finish, mean_logprob, request_for
from tasks.task import Task

if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate

#: longest single step a proposal may take, in tokens: a line, or a paragraph
STEP_TOKENS = 48
PARAGRAPH_STEP_TOKENS = 192
#: how often one state may be expanded (the first time plus re-samples)
MAX_EXPANSIONS_PER_STATE = 8
#: rounds of expansion allowed per step of ``max_steps`` (re-samples and backtracking)
ROUNDS_PER_STEP = 3


@dataclass
class Beam:
    """A partial trace: its lines, tokens spent on them and its latest score."""

    lines: list[str] = field(default_factory=list)
    tokens: int = 0
    score: float = 0.0


@dataclass
class _Search:
    """One search's state across rounds: the frontier, the valid states set aside for
    backtracking, how often each state was expanded, the finished answers and the tallies
    ``BeamSearch.run`` reports."""

    beams: list[Beam] = field(default_factory=lambda: [Beam()])
    pool: list[Beam] = field(default_factory=list)
    expanded: Counter[tuple[str, ...]] = field(default_factory=Counter)
    finished: list[Candidate] = field(default_factory=list)
    prompt_tokens: int = 0
    generated: int = 0
    spent: int = 0
    samples: int = 0
    rounds: int = 0
    asked: int = 0

    def record(
        self, results: list[GenerationResult | None], delimiter: str
    ) -> list[tuple[Beam, str, int, float]]:
        """Counts the round's calls into the tallies; returns the distinct proposals of
        every state whose call finished (``_dedupe``), in frontier order."""
        proposals: list[tuple[Beam, str, int, float]] = []
        for beam, res in zip(self.beams, results, strict=True):
            if res is None:
                continue
            self.prompt_tokens = self.prompt_tokens or res.prompt_tokens
            self.generated += res.completion_tokens
            self.samples += len(res.completions)
            proposals += _dedupe(beam, res, delimiter)
        return proposals


class BeamSearch(Strategy):
    """Keep the best ``beam_width`` partial traces, ``expansions`` proposals each."""

    name = "beam_search"

    async def run(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """The best finished trace (or the best partial one when none finished).

        ``stop_reason``: verified (an exact verifier accepted an answer), answered (every
        beam finished, no exact verifier to ask for more), budget (tokens or steps spent),
        exhausted (every state was expanded and nothing is left to backtrack to) or deadline.
        """
        started = clock()
        base = await base_prompt(problem, backend)
        search = _Search()
        stop: StopReason = "budget"
        while search.rounds < ROUNDS_PER_STEP * budget.max_steps:
            halt = await _round(search, problem, backend, budget, base, deadline, clock)
            if halt is not None:
                stop = halt
                break
        chosen = _best(search.finished, search.beams, problem.task)
        return finish(
            self.name,
            chosen=chosen,
            candidates=search.finished,
            prompt_tokens=search.prompt_tokens,
            generated_tokens=search.generated,
            verifier_tokens=search.spent,
            started=started,
            clock=clock,
            samples=search.samples,
            stop_reason=stop,
            planned=search.asked,
        )

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Where steps can be told apart and extended: answers or a verifier, and
        continuations."""
        return est.selectable and est.continuations and not est.structured

    @classmethod
    def unavailable(cls, est: DifficultyEstimate) -> str | None:
        """It extends partial answers: without continuations, or for an answer that must be
        whole JSON or tool calls, it cannot run."""
        if est.structured:
            return STRUCTURED_REFUSAL.format(name=cls.name)
        if est.continuations:
            return None
        return (
            "beam_search extends partial answers, which needs the model's chat template and a "
            "raw-prompt endpoint: set model.tokenizer_path (a tokenizer directory or the "
            "model's .gguf) or use a server with a template endpoint"
        )

    @classmethod
    def parallel_samples(cls, budget: Budget) -> int:
        """Every state's proposals in one round of concurrent calls."""
        return budget.beam_width * budget.expansions

    @classmethod
    def max_generated_tokens(cls, budget: Budget, think: ThinkTags | None = None) -> int:
        """Its token budget plus the one round of expansions that may cross it."""
        return 2 * budget.max_tokens * budget.beam_width * budget.expansions

    @classmethod
    def calls(cls, budget: Budget) -> float:
        """One round of (concurrent) calls per step."""
        return float(budget.max_steps)

    @classmethod
    def calls_made(cls, budget: Budget, result: StrategyResult) -> int | None:
        """Its calls overlap within a round: its wall time says nothing about one call."""
        return None

    @classmethod
    def shrink(cls, budget: Budget) -> Budget | None:
        """Half the beam and half the proposals per state."""
        if budget.beam_width <= 1 and budget.expansions <= 1:
            return None
        return budget.model_copy(
            update={
                "beam_width": max(1, budget.beam_width // 2),
                "expansions": max(1, budget.expansions // 2),
            }
        )


async def _round(
    search: _Search,
    problem: Problem,
    backend: Backend,
    budget: Budget,
    base: str,
    deadline: float,
    clock: Clock,
) -> StopReason | None:
    """Expands the frontier once and moves ``search`` on; returns why the search stops
    (verified, deadline, budget, answered, exhausted) or None to run another round."""
    search.expanded.update(tuple(b.lines) for b in search.beams)
    results = await _expand(
        problem, backend, budget, base, search.beams, search.rounds, deadline, clock
    )
    search.rounds += 1
    search.asked += budget.expansions * sum(r is not None for r in results)
    proposals = search.record(results, problem.task.step_delimiter)
    # Children are graded even when the deadline cut a call: a verified answer among them
    # still wins over the deadline.
    verifier = problem.verifier
    children, done, spent, verified = await _grow(proposals, verifier, problem)
    search.spent += spent
    search.finished += done
    if verified:
        return "verified"
    if any(r is None for r in results):
        return "deadline"
    if search.generated >= budget.max_tokens * budget.beam_width * budget.expansions:
        return "budget"
    exact = verifier is not None and verifier.exact
    search.beams, search.pool, stop = _next_frontier(
        _within_budget(children, budget), search, exact, budget.beam_width
    )
    return stop


def _within_budget(children: list[Beam], budget: Budget) -> list[Beam]:
    """The children that may still grow: a trace that has used its whole token or step
    budget cannot go on."""
    return [b for b in children if b.tokens < budget.max_tokens and len(b.lines) < budget.max_steps]


def _next_frontier(
    children: list[Beam], search: _Search, exact: bool, width: int
) -> tuple[list[Beam], list[Beam], StopReason | None]:
    """(next frontier, next pool, why to stop or None) after a round (pure).

    The best ``width`` children go on and the rest are set aside. With no child left the
    search stops at its finished answers unless an exact verifier rejected them all;
    otherwise it backtracks to the best set-aside states, and stops when there are none.
    """
    if children:
        children = sorted(children, key=lambda b: b.score, reverse=True)
        return children[:width], search.pool + children[width:], None
    if search.finished and not exact:
        return search.beams, search.pool, "answered"  # nothing says the answers are wrong
    pool = _backtrack(search.beams, search.pool, search.expanded)
    if not pool:
        return search.beams, pool, "exhausted"
    return pool[-width:][::-1], pool[:-width], None


def _backtrack(
    beams: list[Beam], pool: list[Beam], expanded: Counter[tuple[str, ...]]
) -> list[Beam]:
    """The set-aside pool after a dead frontier, best last.

    The frontier's states go back to the pool, and every failed expansion of a state counts
    as one step back up the tree: a deep state is re-sampled, a state that keeps failing
    yields to a shallower sibling (backtracking, as Tree of Thoughts' DFS does).
    """
    pool = pool + [b for b in beams if expanded[tuple(b.lines)] < MAX_EXPANSIONS_PER_STATE]
    pool.sort(key=lambda b: (len(b.lines) - expanded[tuple(b.lines)], b.score))
    return pool


async def _expand(
    problem: Problem,
    backend: Backend,
    budget: Budget,
    base: str,
    beams: list[Beam],
    round_: int,
    deadline: float,
    clock: Clock,
) -> list[GenerationResult | None]:
    """One call per state, concurrently: ``budget.expansions`` proposals of its next line
    (None for a call the deadline cut)."""
    return list(
        await asyncio.gather(
            *(
                call_until(
                    backend,
                    request_for(
                        problem,
                        n=budget.expansions,
                        max_tokens=min(step_tokens(problem.task), budget.max_tokens),
                        temperature=budget.temperature,
                        stop=[problem.task.step_delimiter],
                        logprobs=backend.capabilities.free_logprobs,
                        prompt=base + "".join(s + problem.task.step_delimiter for s in b.lines),
                        seed=_seed(problem, round_, i),
                    ),
                    deadline,
                    clock,
                )
                for i, b in enumerate(beams)
            )
        )
    )


def step_tokens(task: Task) -> int:
    """Most tokens one step may take: a line for line-by-line tasks, else a paragraph."""
    return STEP_TOKENS if task.step_delimiter == "\n" else PARAGRAPH_STEP_TOKENS


def _seed(problem: Problem, call: int, state: int) -> int | None:
    """A fresh seed per call and state, so a re-sampled state gets new proposals."""
    return offset_seed(problem.seed, 104_729 * call + state)


def _dedupe(
    beam: Beam, res: GenerationResult, delimiter: str
) -> list[tuple[Beam, str, int, float]]:
    """Distinct next steps of ``beam``: (beam, step, tokens of one copy, frequency score).

    The frequency score (share of the ``n`` proposals, plus a small log-prob tie-break) is
    what ranks children without a process verifier.
    """
    counts: Counter[str] = Counter()
    tokens: dict[str, int] = {}
    lps: dict[str, float] = {}
    for c in res.completions:
        line = c.text.split(delimiter)[0].rstrip()
        counts[line] += 1
        tokens[line] = tokens.get(line, 0) + c.tokens
        lps[line] = max(lps.get(line, -1e9), mean_logprob(c))
    n = max(1, len(res.completions))
    # Duplicates' tokens were spent too; the kept child carries one copy, the rest is hidden.
    return [
        (beam, line, max(1, tokens[line] // counts[line]), counts[line] / n + 0.01 * lps[line])
        for line in counts
    ]


async def _grow(
    proposals: list[tuple[Beam, str, int, float]], verifier: Verifier | None, problem: Problem
) -> tuple[list[Beam], list[Candidate], int, bool]:
    """Children of the proposals: (live beams, finished answers, verifier tokens, verified?).

    With an exact process verifier an invalid step is pruned at once (it cannot lead to a
    valid answer); with a learned one the step score ranks the child.
    """
    beams: list[Beam] = []
    done: list[Candidate] = []
    spent, verified = 0, False
    task = problem.task
    for beam, line, tokens, freq in proposals:
        child = Beam(beam.lines + [line], beam.tokens + tokens, freq)
        if task.answers.states_answer(line):
            cand = Candidate(
                text=task.step_delimiter.join(child.lines),
                tokens=child.tokens,
                answer=task.answer_of(line),
                score=freq,
            )
            s, exact_ok = await _outcome(verifier, problem, cand)
            spent += s
            done.append(cand)
            verified = verified or exact_ok
            continue
        if not line.strip():
            continue
        if isinstance(verifier, ProcessVerifier):
            step = await _step_score(verifier, problem, child.lines)
            if step is not None:
                if verifier.exact and step <= 0.0:
                    continue  # an invalid step cannot lead to a valid answer
                child.score = step + 0.1 * freq
        beams.append(child)
    return beams, done, spent, verified


async def _step_score(
    verifier: ProcessVerifier, problem: Problem, lines: list[str]
) -> float | None:
    """The latest step's process score, or None when the verifier cannot score this problem."""
    try:
        scores = await verifier.score_steps_async(problem.text, lines)
    except VerifierError:
        return None
    return scores[-1] if scores else None


async def _outcome(
    verifier: Verifier | None, problem: Problem, cand: Candidate
) -> tuple[int, bool]:
    """Scores a finished trace in place; returns (verifier tokens, exactly verified?)."""
    if verifier is None:
        return 0, False
    try:
        (cand.score,) = await verifier.score_many(problem.text, [cand.text], problem.reference)
    except VerifierError:
        return 0, False
    return verifier.verifier_tokens(problem.text, cand.text), verifier.exact and cand.score >= 1.0


def _best(finished: list[Candidate], beams: list[Beam], task: Task) -> Candidate | None:
    """The response to return.

    With a verifier: the best-scored finished trace. Without one: a vote over the finished
    answers weighted by their proposal frequency (the answer most of the search agreed on),
    its most frequent trace. With nothing finished: the best live partial trace.
    """
    if finished and task.verifier is not None:
        return max(finished, key=lambda c: c.score if c.score is not None else -1.0)
    if finished:
        weight: dict[str, float] = {}
        for c in finished:
            key = task.vote_key(c.answer)
            if key is not None:
                weight[key] = weight.get(key, 0.0) + (c.score or 0.0)
        if weight:
            top = max(weight, key=lambda k: weight[k])
            pool = [c for c in finished if task.vote_key(c.answer) == top]
            return max(pool, key=lambda c: c.score or 0.0)
        return max(finished, key=lambda c: c.score or 0.0)
    if beams:
        b = max(beams, key=lambda b: b.score)
        text = task.step_delimiter.join(b.lines)
        return Candidate(text=text, tokens=b.tokens, answer=None, score=b.score)
    return None
