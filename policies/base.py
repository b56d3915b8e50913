"""The ``Strategy`` contract: how one way of spending compute is run and accounted for.

Every strategy is anytime: it gets a monotonic ``deadline`` (seconds, same clock as
``clock()``) and returns the best answer found so far when time runs out, with
``stop_reason="deadline"``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, ChatMessage
from backends.verifiers.base import Verifier

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


class StrategyError(ValueError):
    """A strategy could not be built or run with the given budget/problem."""


class Budget(BaseModel):
    """How much compute a strategy may spend; filled by the selector or the request.

    ``max_tokens`` bounds each sample's (or each step's trace's) generated tokens;
    ``samples`` is N for best-of-N and the maximum for self-consistency; ``beam_width`` and
    ``expansions`` shape step search (keep b, propose k per state).
    """

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=128, ge=1, le=32768)
    samples: int = Field(default=1, ge=1, le=256)
    batch_size: int = Field(default=4, ge=1, le=256)
    beam_width: int = Field(default=1, ge=1, le=64)
    expansions: int = Field(default=1, ge=1, le=64)
    max_steps: int = Field(default=8, ge=1, le=64)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)


@dataclass
class Problem:
    """One request as strategies see it: chat ``messages`` or a raw ``prompt``.

    ``text`` is the user's problem (the last user message, or the raw prompt) and is what
    verifiers read. ``reference`` is a known answer (benchmarks only). ``prefix`` is the
    start of the answer already generated greedily (the router's probe, cut at its token
    limit) and ``prefix_tokens`` its length: single pass continues from it instead of
    generating it again.
    """

    text: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    reference: str | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    prefix: str = ""
    prefix_tokens: int = 0


@dataclass
class Candidate:
    """One full response a strategy considered, with its score and extracted answer."""

    text: str
    tokens: int
    answer: str | None = None
    score: float | None = None
    finish_reason: str = "stop"


@dataclass
class StrategyResult:
    """What a strategy returns: the chosen response and an honest account of the compute.

    ``visible_tokens`` are the tokens of the returned ``text``; ``hidden_tokens`` every other
    generated token (other samples, pruned branches, probes); ``verifier_tokens`` the model
    tokens verifiers spent. ``completion_tokens`` (visible + hidden) is what usage reports.
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

    @property
    def completion_tokens(self) -> int:
        """Every generated token, visible and hidden."""
        return self.visible_tokens + self.hidden_tokens

    @property
    def stopped_early(self) -> bool:
        """True when the strategy stopped before spending its whole budget."""
        return self.stop_reason in ("answered", "verified", "settled", "deadline")


class Strategy(abc.ABC):
    """One way of spending inference-time compute, registered by ``name``."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def run(
        self,
        problem: Problem,
        backend: Backend,
        verifier: Verifier | None,
        budget: Budget,
        deadline: float,
        clock: Clock = time.monotonic,
    ) -> StrategyResult:
        """Run to completion or to ``deadline`` and return the best response found."""
