"""The ``Strategy`` contract: how one way of spending compute is run, priced and accounted for.

Every strategy is anytime: it gets a monotonic ``deadline`` (seconds, same clock as
``clock()``) and returns the best answer found so far when time runs out, with
``stop_reason="deadline"``. Besides ``run``, a strategy declares what the policy needs to
price it (calls it makes, how its budget shrinks, whether it can reuse or continue the
difficulty probe), so no code outside ``policies/`` names a strategy.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from backends.base import Backend, ChatMessage, StreamDelta, ThinkTags
from backends.verifiers.base import Verifier
from policies.budget import Budget
from tasks.task import OPEN_TASK, Task

if TYPE_CHECKING:
    from difficulty.estimate import DifficultyEstimate

Clock = Callable[[], float]
StopReason = Literal[
    "answered",  # single sample / reasoning finished with an answer line
    "budget",  # token or sample budget spent
    "verified",  # an exact verifier accepted a candidate
    "settled",  # adaptive stopping: the leading answer is statistically settled
    "dispersed",  # adaptive stopping: answers so scattered that no majority is forming
    "deadline",  # out of time, best-so-far returned
    "exhausted",  # search frontier empty
]

#: seed offset between independent copies of one request (OpenAI's ``n``)
COPY_SEED_STRIDE = 1
#: seeds live in [0, 2**63): the API's range and every backend's (torch, llama.cpp) seed type
SEED_MODULUS = 2**63


def offset_seed(seed: int | None, offset: int) -> int | None:
    """``seed`` moved by ``offset`` and wrapped into [0, 2**63), or None for None.

    Strategies derive per-copy, per-batch and per-call seeds from the request's seed; wrapping
    keeps them valid for the largest seed a request may send (2**63 - 1).
    """
    return None if seed is None else (seed + offset) % SEED_MODULUS


#: why a strategy that extends partial answers cannot serve a structured request
STRUCTURED_REFUSAL = (
    "{name} extends partial answers as raw prompts, which carry no tools and no JSON "
    "response_format; a request with either runs single_pass, best_of_n or self_consistency"
)


class StrategyError(ValueError):
    """A strategy could not be built or run with the given budget/problem; ``field`` names
    the request field at fault (None: the request's ``acr`` options)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Problem:
    """One request as strategies see it: chat ``messages`` or a raw ``prompt``.

    ``text`` is the user's problem (the last user message, or the raw prompt) and is what
    verifiers read; ``task`` is the profile it matched (detected once per request) with its
    verifier. ``reference`` is a known answer (benchmarks only). ``prefix`` is the start of
    the answer already generated greedily (the router's probe, cut at its token limit) and
    ``prefix_tokens`` its length: single pass continues from it instead of generating it
    again. ``think`` marks a reasoning model's thinking (None: the model does not think
    between tags). ``params`` are the client's fields the router does not act on (tools,
    response_format, penalties, vendor fields): every backend call carries them.
    ``top_logprobs`` is what the client asked of logprobs (None: none).
    """

    text: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    reference: str | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    prefix: str = ""
    prefix_tokens: int = 0
    task: Task = OPEN_TASK
    think: ThinkTags | None = None
    params: dict[str, Any] = field(default_factory=dict)
    top_logprobs: int | None = None
    #: the client's nucleus sampling bound (1.0: none), on every sampled call
    top_p: float = 1.0

    @property
    def verifier(self) -> Verifier | None:
        """The verifier of the problem's task (None: nothing checks its answers)."""
        return self.task.verifier

    def copy(self, index: int) -> Problem:
        """The ``index``-th independent copy (its own sampling seed when seeded)."""
        if not index or self.seed is None:
            return self
        return dataclasses.replace(self, seed=offset_seed(self.seed, COPY_SEED_STRIDE * index))


@dataclass
class Candidate:
    """One full response a strategy considered, with its score and extracted answer."""

    text: str
    tokens: int
    answer: str | None = None
    score: float | None = None
    finish_reason: str = "stop"
    #: mean token log-prob (None when the backend gave none): the tie-breaker of votes
    logprob: float | None = None
    #: the tool calls it made, and the client's logprobs of it, when there are any
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None


@dataclass
class StrategyResult:
    """What a strategy returns: the chosen response and an honest account of the compute.

    ``visible_tokens`` are the tokens of the returned ``text``; ``hidden_tokens`` every other
    generated token (other samples, pruned branches, probes); ``verifier_tokens`` the model
    tokens verifiers spent. ``completion_tokens`` (visible + hidden) is what usage reports.
    ``samples`` counts what the strategy drew (samples, proposals or calls; see each).
    """

    strategy: str
    text: str
    answer: str | None
    candidates: list[Candidate]
    prompt_tokens: int
    visible_tokens: int
    hidden_tokens: int
    verifier_tokens: int
    wall_ms: float
    samples: int
    stop_reason: StopReason
    score: float | None = None
    finish_reason: str = "stop"
    #: a reasoning model's thinking behind ``text`` (hidden tokens; ``reasoning_content``)
    reasoning: str | None = None
    #: completions the strategy asked the backend for, and those it got
    samples_planned: int = 0
    #: the chosen response's tool calls and the client's logprobs of it, when there are any
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None

    @property
    def completion_tokens(self) -> int:
        """Every generated token, visible and hidden."""
        return self.visible_tokens + self.hidden_tokens


class Strategy(abc.ABC):
    """One way of spending inference-time compute, registered by ``name``.

    ``run`` is the strategy; the class methods are what the policy prices it with. The
    defaults describe a strategy that makes one backend call and cannot use the probe.
    """

    name: ClassVar[str]
    #: whether the client's ``temperature`` replaces the budget's (one sampled answer)
    takes_client_temperature: ClassVar[bool] = False

    @abc.abstractmethod
    async def run(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """Run to completion or to ``deadline`` and return the best response found.

        ``problem.verifier`` (may be None) scores candidates.
        """

    async def run_copies(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        n: int,
        clock: Clock = time.monotonic,
    ) -> list[StrategyResult]:
        """``n`` independent answers (OpenAI's ``n``): ``n`` concurrent runs, each copy with
        its own seed. Strategies that can share one backend call override this."""
        runs = [self.run(problem.copy(i), backend, budget, deadline, clock) for i in range(n)]
        return list(await asyncio.gather(*runs))

    async def stream(
        self,
        problem: Problem,
        backend: Backend,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> AsyncIterator[str | StreamDelta | StrategyResult]:
        """The answer as text pieces (or ``StreamDelta`` pieces with tool-call deltas or
        logprobs), then the ``StrategyResult``. The default runs the whole strategy first
        (search must end before its answer is known); single pass streams the backend's
        tokens."""
        result = await self.run(problem, backend, budget, deadline, clock)
        if result.text:
            yield result.text
        yield result

    # -- pricing: what the policy needs to know --------------------------------------------

    @classmethod
    def arm_name(cls, budget: Budget) -> str:
        """The arm a (strategy, budget) is priced and learned as."""
        return cls.name

    @classmethod
    def fixed_samples(cls, budget: Budget) -> int | None:
        """Samples every run draws, whatever the item; None when that varies."""
        return None

    @classmethod
    def max_generated_tokens(cls, budget: Budget, think: ThinkTags | None = None) -> int:
        """The most tokens one run may generate with ``budget`` (on a model that thinks
        between ``think`` tags): what rate limits reserve and server limits bound."""
        return budget.max_tokens

    @classmethod
    def parallel_samples(cls, budget: Budget) -> int:
        """Samples one call decodes side by side (a batching backend's rows)."""
        return 1

    @classmethod
    def calls(cls, budget: Budget) -> float:
        """Sequential backend calls one run makes (each may wait for a decode cycle)."""
        return 1.0

    @classmethod
    def calls_made(cls, budget: Budget, result: StrategyResult) -> int | None:
        """Sequential calls a finished run made, to learn one call's latency from its wall
        time; None when its calls overlapped and its wall time says nothing about one."""
        return 1

    @classmethod
    def calls_vary(cls) -> bool:
        """Whether the calls a run makes depend on the item (learned per task kind)."""
        return False

    @classmethod
    def shrink(cls, budget: Budget) -> Budget | None:
        """A smaller budget of the same strategy to fit a deadline under load, or None
        when it cannot shrink further."""
        return None

    @classmethod
    def reuses_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Whether the probe's greedy completion already is this arm's answer."""
        return False

    @classmethod
    def continues_probe(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Whether this arm would continue a probe cut by its token limit."""
        return False

    @classmethod
    def offered(cls, budget: Budget, est: DifficultyEstimate) -> bool:
        """Whether ``auto`` may choose this arm for ``est``: it can do something the others
        cannot (an arm that could only repeat the probe, or choose among candidates nothing
        can tell apart, is never offered)."""
        return True

    @classmethod
    def unavailable(cls, est: DifficultyEstimate) -> str | None:
        """Why this strategy cannot run at all here (the backend lacks what it needs), or
        None; a request that names it then gets a 400 with this reason."""
        return None

    @classmethod
    def expected_samples(
        cls, budget: Budget, p_success: float, exact_verifier: bool
    ) -> float | None:
        """Samples drawn on average when it stops early, or None when it draws them all."""
        return None
